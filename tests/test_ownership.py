"""Series ownership between daemons on one Redis (docs/scaling.md, "Ownership"):
leases with fencing, the take-over of a series' history, fenced signals,
control commands forwarded to the owner, and two real daemons sharing the
streams, one of them killed with SIGKILL."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from quantum_daemon.core.ensemble import Signal
from quantum_daemon.domain.config import load as load_config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference.fenced import FENCE_REFUSED, publish_signals
from quantum_daemon.ingest import IngestMetrics, IngestService
from quantum_daemon.ingest.replay import publish_frame
from quantum_daemon.ingest.takeover import history_start
from quantum_daemon.lifecycle.control import Command, ControlConsumer
from quantum_daemon.runtime.ownership import SeriesOwnership, default_instance, fair_share
from quantum_daemon.storage.bar_store import DB_FILENAME, BarStore
from quantum_daemon.storage.events import EventPublisher
from tests.conftest import make_bars
from tests.daemon_proc import DaemonProcess, api_port, write_config

KEYS = Keys()
SERIES = [("AAAUSDT", "1h"), ("BBBUSDT", "1h"), ("CCCUSDT", "1h"), ("DDDUSDT", "1h")]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def owners(url: str, n: int, lease_s: float) -> list[SeriesOwnership]:
    return [SeriesOwnership(aioredis.Redis.from_url(url), KEYS, f"d{i}", lease_s) for i in range(n)]


def test_fair_share_and_default_instance(tmp_path: Path) -> None:
    assert [fair_share(4, n) for n in (0, 1, 2, 3, 4, 5)] == [4, 4, 2, 2, 1, 1]
    a, b = default_instance(tmp_path / "a"), default_instance(tmp_path / "b")
    assert a != b and a == default_instance(tmp_path / "a")


def test_leases_split_fairly_fence_and_move_when_an_owner_dies(redis_url: str) -> None:
    async def scenario() -> None:
        d0, d1 = owners(redis_url, 2, lease_s=1.0)
        await d0.register()
        await d1.register()
        got0, _ = await d0.tick(SERIES)
        got1, _ = await d1.tick(SERIES)
        assert len(got0) == len(got1) == 2 and not set(got0) & set(got1)
        assert all(d0.owns(s) for s in got0) and not any(d0.owns(s) for s in got1)
        # a daemon never takes a live lease, even with room for it
        await d0.release([got0[0]])
        assert (await d1.tick(SERIES))[0] == []  # d1 is at its share
        assert (await d0.tick(SERIES))[0] == [got0[0]]  # a new token
        taken = got0[0]
        token_before = d0.fence(taken)
        # d1 stops (no renewal, no registration): its leases expire
        await asyncio.sleep(0.4)
        assert await d0.tick(SERIES) == ([], [])  # d0 renews its own
        await asyncio.sleep(0.7)
        gained, lost = await d0.tick(SERIES)
        assert lost == [] and sorted(gained) == sorted(got1)
        assert sorted(d0.owned()) == sorted(SERIES)
        assert d0.fence(taken) == token_before
        # the old owner's renewal fails: it learns it lost them
        _, lost1 = await d1.tick(SERIES)
        assert sorted(lost1) == sorted(got1) and d1.owned() == []
        assert await d0.register() == ["d0", "d1"]  # d1 registered again by ticking
        for d in (d0, d1):
            await d.leave()
            await d.client.aclose()

    run(scenario())


def signal_at(ts: int, symbol: str = "AAAUSDT") -> Signal:
    return Signal(
        symbol=symbol,
        tf="1h",
        ts=ts,
        mu=0.001,
        p_up=0.6,
        position=0.5,
        position_source="ensemble",
        plain_position=0.5,
        contributions=(),
        versions={},
        latency_ms=1.0,
    )


def test_fenced_publish_adds_each_bar_once_and_only_for_the_lease(
    redis_url: str, redis_client: redis.Redis
) -> None:
    stream = KEYS.signals("AAAUSDT", "1h")
    lease = KEYS.owner("AAAUSDT", "1h")

    async def scenario() -> list[int]:
        client = aioredis.Redis.from_url(redis_url)
        (d0,) = owners(redis_url, 1, lease_s=5.0)
        await d0.register()
        await d0.claim([("AAAUSDT", "1h")])
        fence = d0.fence(("AAAUSDT", "1h"))
        assert fence is not None
        added = [
            await publish_signals(client, lease, stream, fence, [signal_at(1), signal_at(2)], 100)
        ]
        # a catch-up that repeats bars 1 and 2 adds only bar 3
        added.append(
            await publish_signals(
                client, lease, stream, fence, [signal_at(t) for t in (1, 2, 3)], 100
            )
        )
        added.append(await publish_signals(client, lease, stream, "d9 99", [signal_at(4)], 100))
        await d0.leave()
        added.append(await publish_signals(client, lease, stream, fence, [signal_at(5)], 100))
        added.append(await publish_signals(client, lease, stream, "", [signal_at(6)], 100))
        await client.aclose()
        await d0.client.aclose()
        return added

    assert run(scenario()) == [2, 1, FENCE_REFUSED, FENCE_REFUSED, 1]
    assert [int(f["ts"]) for _, f in redis_client.xrange(stream)] == [1, 2, 3, 6]


def test_take_over_loads_the_history_and_the_dead_owners_pending_entries(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    config = write_config(tmp_path / "c.toml", redis_url, tmp_path / "data", 0)
    cfg = load_config(config)
    stream = KEYS.bars("BTCUSDT", "1h")
    bars = make_bars(300, symbol="BTCUSDT").to_frame()
    redis_client.xgroup_create(stream, cfg.ingest.group, id="0", mkstream=True)
    publish_frame(redis_client, stream, bars.iloc[:200])
    # the old owner: read 200 entries, acknowledged the first 120, then died
    read = redis_client.xreadgroup(cfg.ingest.group, "gone-1", {stream: ">"}, count=200)
    ids = [entry_id for entry_id, _ in read[0][1]]
    redis_client.xack(stream, cfg.ingest.group, *ids[:120])
    publish_frame(redis_client, stream, bars.iloc[200:])  # never read by anybody

    async def scenario() -> dict[str, int]:
        client = aioredis.Redis.from_url(redis_url)
        with BarStore.in_dir(cfg.storage.data_dir) as store:
            async with IngestService(
                cfg, client, store, IngestMetrics(CollectorRegistry()), owned_only=True
            ) as ingest:
                await ingest.prepare()
                assert ingest.streams == {} and ("BTCUSDT", "1h") in ingest.candidate_series()
                await ingest.take_over([("BTCUSDT", "1h")])
                await ingest.run_until_idle()
                stored = store.read_bars("BTCUSDT", "1h")
                ingest.give_up([("BTCUSDT", "1h")])
                assert ingest.streams == {}
                # taking it over again loads only what came since
                last_id = redis_client.xrevrange(stream, count=1)[0][0]
                publish_frame(
                    redis_client, stream, make_bars(310, symbol="BTCUSDT").to_frame()[300:]
                )
                present = functools.partial(ingest._stored_among, "BTCUSDT", "1h")
                start = await history_start(ingest._ranges, stream.encode(), 100, present)
                # at most one chunk (100) before the 10 new entries, not the whole stream
                assert start != b"-" and start.decode()[1:] <= last_id
                assert 10 <= len(redis_client.xrange(stream, min=start.decode())) <= 110
                await ingest.take_over([("BTCUSDT", "1h")])
                await ingest.run_until_idle()
                assert len(store.read_bars("BTCUSDT", "1h").ts) == 310
        await client.aclose()
        return {"bars": len(stored.ts), "distinct": len(set(stored.ts.tolist()))}

    assert run(scenario()) == {"bars": 300, "distinct": 300}
    assert redis_client.xpending(stream, cfg.ingest.group)["pending"] == 0
    assert redis_client.xlen(KEYS.dlq) == 0


def test_a_command_for_another_owners_model_is_forwarded_and_answered_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    answered: dict[str, list[str]] = {"d0": [], "d1": []}

    def consumer(client: aioredis.Redis, me: str, other: str, owns: str) -> ControlConsumer:
        async def handler(command: Command) -> list[str]:
            answered[me].append(command.model_id)
            return ["nothing"]

        async def route(command: Command) -> str | None:
            return None if owns in command.model_id else other

        return ControlConsumer(
            client,
            KEYS,
            "quantum-daemon",
            handler,
            EventPublisher(client, KEYS),
            consumer=me,
            inbox=KEYS.control_inbox(me),
            route=route,
        )

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        c0 = consumer(client, "d0", "d1", "BTCUSDT")
        c1 = consumer(client, "d1", "d0", "ETHUSDT")
        await c0.ensure_group()
        await c1.ensure_group()
        for _ in range(2):
            redis_client.xadd(KEYS.control, {"command": "train", "model_id": "xgb_ETHUSDT_1h"})
            redis_client.xadd(KEYS.control, {"command": "train", "model_id": "xgb_BTCUSDT_1h"})
        await c0.read_once(">", None)  # d0 reads all four: two are d1's
        await c1.read_once(">", None)  # d1's inbox
        assert c0.forwarded == 2 and c1.forwarded == 0
        await client.aclose()

    run(scenario())
    assert answered == {"d0": ["xgb_BTCUSDT_1h"] * 2, "d1": ["xgb_ETHUSDT_1h"] * 2}
    sent = [entry_id for entry_id, _ in redis_client.xrange(KEYS.control)]
    replies = [json.loads(f["data"]) for _, f in redis_client.xrange(KEYS.events)]
    assert sorted(r["command_id"] for r in replies) == sorted(sent)
    assert redis_client.xpending(KEYS.control, "quantum-daemon")["pending"] == 0


# -- two real daemons -----------------------------------------------------------

PAIR = """
[ingest]
symbols = ["BTCUSDT", "ETHUSDT"]
[models]
families = ["xgb"]
symbols = ["XRPUSDT"]
"""


def two_daemon_config(tmp_path: Path, redis_url: str, name: str) -> tuple[Path, int]:
    port = api_port()
    config = write_config(tmp_path / f"{name}.toml", redis_url, tmp_path / name, port, PAIR)
    ownership = f'[daemon]\ninstance = "{name}"\nlease_s = 3.0\nsettle_s = 6.0\n'
    config.write_text(config.read_text().replace("[daemon]\n", ownership, 1))
    return config, port


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def stored_ts(data_dir: Path, symbol: str) -> list[int]:
    if not (data_dir / DB_FILENAME).exists():
        return []
    with BarStore.in_dir(data_dir) as store:
        return store.read_bars(symbol, "1h").ts.tolist()


def signal_ts(client: redis.Redis, symbol: str) -> list[int]:
    return [int(f["ts"]) for _, f in client.xrange(KEYS.signals(symbol, "1h"))]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "quantum_daemon", "--config", str(config), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def took_over(daemon: DaemonProcess, symbol: str) -> int:
    return sum(
        1
        for e in daemon.events
        if e.get("event") == "ingest.took_over" and e.get("symbol") == symbol
    )


def owner_of(daemon: DaemonProcess, symbol: str) -> bool:
    return any(
        e.get("event") == "ownership.claimed" and e.get("symbol") == symbol for e in daemon.events
    )


@pytest.mark.timeout(240)
def test_two_daemons_share_the_series_and_one_takes_over_after_sigkill(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    symbols = ("BTCUSDT", "ETHUSDT")
    frames = {s: make_bars(160, seed=i, symbol=s).to_frame() for i, s in enumerate(symbols)}
    configs = {n: two_daemon_config(tmp_path, redis_url, n) for n in ("alpha", "beta")}
    daemons = {n: DaemonProcess(c).start() for n, (c, _) in configs.items()}
    try:
        for d in daemons.values():
            d.wait_for("daemon.ready", timeout=60)
        for s in symbols:
            wait_until(lambda s=s: any(owner_of(d, s) for d in daemons.values()), 30, s)
        owner = {s: next(n for n, d in daemons.items() if owner_of(d, s)) for s in symbols}
        assert sorted(owner.values()) == ["alpha", "beta"], owner  # one series each
        for s in symbols:
            publish_frame(redis_client, KEYS.bars(s, "1h"), frames[s].iloc[:120])
        every = {s: frames[s]["ts"].astype("int64").tolist() for s in symbols}
        for s in symbols:
            wait_until(lambda s=s: signal_ts(redis_client, s)[-1:] == [every[s][119]], 60, s)
        # every bar stored exactly once across the two stores
        for s in symbols:
            mine = stored_ts(tmp_path / owner[s], s)
            other = stored_ts(tmp_path / ("beta" if owner[s] == "alpha" else "alpha"), s)
            assert mine == every[s][:120] and other == []
        # one signal per bar, and no trust key written by two daemons
        for s in symbols:
            ts = signal_ts(redis_client, s)
            assert ts == sorted(set(ts)) and ts[-1] == every[s][119]
        # every daemon has its own heartbeat; status lists them all
        status = cli(configs["alpha"][0], "status", "--json")
        report = json.loads(status.stdout)
        assert sorted(d["instance"] for d in report["daemons"]) == ["alpha", "beta"]
        assert report["owners"] == {f"{s}:1h": owner[s] for s in symbols}
        # a control command reaches the owner of its model, and gets one answer
        sent = [
            (s, redis_client.xadd(KEYS.control, {"command": "train", "model_id": f"xgb_{s}_1h"}))
            for s in symbols
            for _ in range(3)
        ]
        for s, entry_id in sent:
            answer = daemons[owner[s]].wait_for("control.rejected", timeout=30, command_id=entry_id)
            assert answer["command_id"] == entry_id
            other = daemons["beta" if owner[s] == "alpha" else "alpha"]
            assert not any(
                e.get("command_id") == entry_id
                for e in other.events
                if e.get("event", "").startswith("control.")
                and e.get("event") != "control.forwarded"
            )
        # an operator moves ETHUSDT to BTCUSDT's owner, which loads its history
        victim = owner["BTCUSDT"]
        heir = "beta" if victim == "alpha" else "alpha"
        eth = every["ETHUSDT"]
        moved = cli(configs[heir][0], "owners", "move", "ETHUSDT:1h", victim, "--wait", "20")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        daemons[victim].wait_for("ingest.took_over", timeout=20, symbol="ETHUSDT")
        publish_frame(redis_client, KEYS.bars("ETHUSDT", "1h"), frames["ETHUSDT"].iloc[120:130])
        wait_until(lambda: stored_ts(tmp_path / victim, "ETHUSDT") == eth[:130], 30, "moved")
        wait_until(lambda: signal_ts(redis_client, "ETHUSDT")[-1:] == [eth[129]], 30, "signal")
        # SIGKILL it: both its series move to the other, nothing lost or doubled
        signal_ts_before_kill = signal_ts(redis_client, "BTCUSDT")
        daemons[victim].proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        daemons[victim].wait(timeout=10)
        killed_at = time.monotonic()
        daemons[heir].wait_for("ingest.took_over", timeout=30, symbol="BTCUSDT")
        # within the lease (3 s) and a renewal (1 s), plus room for a busy machine
        assert time.monotonic() - killed_at < 3.0 + 1.0 + 3.0
        # the heir serves the newest bar again, which already has its signal
        stream = KEYS.signals("BTCUSDT", "1h")
        daemons[heir].wait_for("signal.already_published", timeout=30, stream=stream)
        assert signal_ts(redis_client, "BTCUSDT") == signal_ts_before_kill
        wait_until(lambda: took_over(daemons[heir], "ETHUSDT") == 2, 10, "ETHUSDT back")
        publish_frame(redis_client, KEYS.bars("BTCUSDT", "1h"), frames["BTCUSDT"].iloc[120:])
        publish_frame(redis_client, KEYS.bars("ETHUSDT", "1h"), frames["ETHUSDT"].iloc[130:])
        for s in symbols:
            wait_until(lambda s=s: signal_ts(redis_client, s)[-1:] == [every[s][-1]], 60, s)
            assert stored_ts(tmp_path / heir, s) == every[s]
            ts = signal_ts(redis_client, s)
            assert ts == sorted(set(ts)), f"a bar of {s} got two signals"
        assert redis_client.xpending(KEYS.bars("BTCUSDT", "1h"), "quantum-daemon")["pending"] == 0
        daemons[heir].send(signal.SIGTERM)
        assert daemons[heir].wait(timeout=30) == 0
        assert redis_client.keys("quantum:owner:*:*") == []  # released on a graceful stop
    finally:
        for d in daemons.values():
            d.kill()


def test_a_bad_instance_name_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", "redis://127.0.0.1:1/0", tmp_path / "d", 0)
    config.write_text(config.read_text().replace("[daemon]\n", '[daemon]\ninstance = "a b"\n'))
    checked = cli(config, "check-config")
    assert checked.returncode == 78
    assert "daemon.instance" in checked.stderr + checked.stdout


def test_a_restarted_daemon_takes_its_own_leases_back_at_once(redis_url: str) -> None:
    async def scenario() -> None:
        (before,) = owners(redis_url, 1, lease_s=30.0)
        (after,) = owners(redis_url, 1, lease_s=30.0)  # the same instance name, a new life
        (other,) = [SeriesOwnership(aioredis.Redis.from_url(redis_url), KEYS, "d9", 30.0)]
        for d in (before, after, other):
            await d.register()
        assert len(await before.claim(SERIES[:1])) == 1  # then it "dies" holding it
        assert await other.claim(SERIES[:1]) == []  # a live lease of another: no
        assert await after.claim(SERIES[:1]) == SERIES[:1]
        assert after.fence(SERIES[0]) != before.fence(SERIES[0])  # a new token
        assert await before.renew() == SERIES[:1]  # the old life is fenced out
        for d in (before, after, other):
            await d.client.aclose()

    run(scenario())
