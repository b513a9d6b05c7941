"""Hostile bar streams: a discovered stream whose name is not UTF-8 (or not a
valid symbol) is refused with a reason while the daemon stays up and reads
the others; a bar whose ``ts`` is far ahead of the wall clock goes to the
dead-letter stream (``ts_in_future``) instead of the store."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from quantum_daemon.domain.config import ConfigError, load
from quantum_daemon.domain.timeframes import HOUR_MS
from quantum_daemon.storage.bar_store import BarStore
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.ingest_helpers import KEYS, bar_fields, dlq, group_state, ingest_service, make_config
from tests.test_hostile_control import stop

BTC = KEYS.bars("BTCUSDT", "1h")
NOT_UTF8 = b"quantum:bars:\xff\xfe:1h"
T0 = 1_704_067_200_000  # 2024-01-01, on every grid
YEAR_5138 = 27_777_778 * HOUR_MS  # 100_000_000_800_000: 15 digits, on the hour grid


@pytest.mark.timeout(120)
def test_a_stream_name_that_is_not_utf8_is_refused_and_the_daemon_stays_up(
    tmp_path: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.xadd(NOT_UTF8, bar_fields(T0))
    client.xadd(b"quantum:bars:btc/usdt:1h", bar_fields(T0))  # a symbol ids refuse
    client.xadd(BTC, bar_fields(T0))
    port, data_dir = api_port(), tmp_path / "data"
    extra = "[ingest]\nsymbols = []\ndiscover = true\ndiscover_interval_s = 0.2\n"
    config = write_config(tmp_path / "config.toml", redis_url, data_dir, port, extra)
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        refused = daemon.wait_for("ingest.stream_refused", reason="the name is not UTF-8")
        assert refused["stream"] == "quantum:bars:\\xff\\xfe:1h"
        daemon.wait_for("ingest.stream_refused", stream="quantum:bars:btc/usdt:1h")
        daemon.wait_for("ingest.stream_added", stream=BTC)
        deadline = time.monotonic() + 15
        while group_state(client, BTC) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group_state(client, BTC) == (0, 0)  # the good stream is read and acked
        time.sleep(1.0)  # several discovery rounds later
        assert daemon.proc is not None and daemon.proc.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            assert resp.status == 200
        refusals = [e for e in daemon.events if e.get("event") == "ingest.stream_refused"]
        assert len(refusals) == 2  # logged once each, not at every discovery round
    finally:
        stop(daemon)
        client.close()
    with BarStore.in_dir(data_dir) as store:
        assert [(s.symbol, s.tf) for s in store.stats()] == [("BTCUSDT", "1h")]


def test_a_bar_too_far_ahead_of_the_clock_is_dead_lettered(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now = time.time_ns() // 1_000_000
    this_hour = now - now % HOUR_MS
    client.xadd(BTC, bar_fields(YEAR_5138))
    client.xadd(BTC, bar_fields(this_hour + 2 * HOUR_MS))  # two bars ahead: over one bar
    client.xadd(BTC, bar_fields(this_hour + HOUR_MS))  # one bar ahead at most: kept
    client.xadd(BTC, bar_fields(this_hour - HOUR_MS))
    with BarStore.in_dir(tmp_path) as store:
        asyncio.run(run_until_idle(make_config(redis_url), store))
        stored = store.read_bars("BTCUSDT", "1h").ts.tolist()
    assert stored == [this_hour - HOUR_MS, this_hour + HOUR_MS]
    letters = dlq(client)
    assert [letter["reason"] for letter in letters] == ["ts_in_future", "ts_in_future"]
    assert "ahead of the clock" in letters[0]["detail"]
    assert group_state(client, BTC) == (0, 0)


def test_max_future_s_sets_the_margin(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    now = time.time_ns() // 1_000_000
    ahead = now - now % HOUR_MS + 5 * HOUR_MS
    client.xadd(BTC, bar_fields(ahead))
    client.xadd(BTC, bar_fields(ahead + 10 * 24 * HOUR_MS))
    config = make_config(redis_url, max_future_s=86_400.0)
    with BarStore.in_dir(tmp_path) as store:
        asyncio.run(run_until_idle(config, store))
        assert store.read_bars("BTCUSDT", "1h").ts.tolist() == [ahead]
    assert [letter["reason"] for letter in dlq(client)] == ["ts_in_future"]


async def run_until_idle(config, store):  # type: ignore[no-untyped-def]
    async with ingest_service(config, store) as service:
        return await service.run_until_idle()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[ingest]\nmax_future_s = -1\n", "ingest.max_future_s"),
        ('[ingest]\nsymbols = ["BTC/USDT"]\n', "ingest.symbols"),
        ('[models]\nsymbols = ["btcusdt"]\n', "models.symbols"),
        ('[ingest]\nsymbols = ["BTC\\u0000"]\n', "ingest.symbols"),
    ],
)
def test_bad_margins_and_symbols_are_config_errors(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key):
        load(path, env={})


def test_the_default_margin_is_one_bar_of_each_timeframe() -> None:
    from quantum_daemon.ingest.streams import configured_streams

    cfg = make_config("redis://unused", timeframes=("1m", "1d")).ingest
    margins = {s.tf: s.max_future_ms for s in configured_streams(cfg, KEYS).values()}
    assert margins == {"1m": 60_000, "1d": 24 * HOUR_MS}
    custom = dataclasses.replace(cfg, max_future_s=90.0)
    assert {s.max_future_ms for s in configured_streams(custom, KEYS).values()} == {90_000}
