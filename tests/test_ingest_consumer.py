"""The ingest consumer on a real Redis: bad entries are dead-lettered with
their reason while the stream keeps flowing, re-deliveries are no-ops, gaps
are reported, and the metrics say what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from quantum_daemon.ingest import IngestMetrics
from quantum_daemon.storage.bar_store import BarStore
from tests.conftest import make_bars
from tests.ingest_helpers import (
    KEYS,
    bar_fields,
    dlq,
    group_state,
    ingest_service,
    make_config,
    publish,
    stored_bars,
    wait_until,
    xadd,
)

T0 = 1_704_067_200_000
HOUR = 3_600_000
BTC = KEYS.bars("BTCUSDT", "1h")

# (reason, fields of the bad entry); each is followed by a valid bar.
BAD_ENTRIES: list[tuple[str, dict]] = [
    ("missing_field", bar_fields(0, volume=None)),
    ("unexpected_field", {**bar_fields(0), "source": "x"}),
    ("not_numeric", bar_fields(0, open="abc")),
    ("not_numeric", {**bar_fields(0), "ts": "soon"}),
    ("ts_out_of_range", {**bar_fields(0), "ts": "9" * 16}),
    ("not_finite", bar_fields(0, close="nan")),
    ("not_finite", bar_fields(0, high="inf")),
    ("non_positive_price", bar_fields(0, low="0")),
    ("non_positive_price", bar_fields(0, open="-2")),
    ("negative_volume", bar_fields(0, volume="-1")),
    ("high_below_open_close", bar_fields(0, high="100.5", close="101")),
    ("low_above_open_close", bar_fields(0, low="99.5", close="99")),
    ("off_grid", {**bar_fields(0), "ts": T0 + 1}),
    ("too_large", bar_fields(0, volume="1" * 5000)),
]


def test_every_bad_entry_is_dead_lettered_and_the_next_bar_is_stored(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_url)
    expected = []
    for i, (_, fields) in enumerate(BAD_ENTRIES):
        if fields.get("ts") == 0:
            fields = {**fields, "ts": T0 + (2 * i) * HOUR}
        xadd(r, BTC, **fields)
        good = bar_fields(T0 + (2 * i + 1) * HOUR, close=100 + i)
        xadd(r, BTC, **good)
        expected.append(good["ts"])
    xadd(r, BTC, **bar_fields(T0 + HOUR, close=142.0))  # a conflict with a stored bar
    xadd(r, BTC, **bar_fields(T0 + 3 * HOUR, close=101.0))  # identical re-delivery: a no-op
    xadd(r, KEYS.bars("BTCUSDT", "7m"), **bar_fields(T0))  # unknown timeframe

    config = make_config(redis_url, discover=True)
    with BarStore.in_dir(tmp_path) as store:
        totals = asyncio.run(run_until_idle(config, store))
        assert store.read_bars("BTCUSDT", "1h").ts.tolist() == expected

    letters = dlq(r)
    reasons = [letter["reason"] for letter in letters]
    assert sorted(reasons) == sorted(
        [reason for reason, _ in BAD_ENTRIES] + ["conflict", "unknown_timeframe"]
    )
    conflict = next(letter for letter in letters if letter["reason"] == "conflict")
    assert json.loads(conflict["fields"])["close"] == "142.0"
    assert json.loads(conflict["stored"])["close"] == 100.0
    assert conflict["stream"] == BTC and conflict["id"]
    too_large = next(letter for letter in letters if letter["reason"] == "too_large")
    assert len(too_large["fields"]) < 400  # the DLQ keeps a preview, not the whole entry
    assert (totals.inserted, totals.duplicates, totals.conflicts) == (len(BAD_ENTRIES), 1, 1)
    assert group_state(r, BTC) == (0, 0)
    assert group_state(r, KEYS.bars("BTCUSDT", "7m")) == (0, 0)


async def run_until_idle(config, store):
    async with ingest_service(config, store) as service:
        return await service.run_until_idle()


def test_a_redelivered_stream_is_stored_once(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    bars = make_bars(300, symbol="BTCUSDT")
    publish(r, bars)
    publish(r, bars)  # the publisher retried everything
    with BarStore.in_dir(tmp_path) as store:
        totals = asyncio.run(run_until_idle(make_config(redis_url), store))
        assert (totals.inserted, totals.duplicates, totals.rejected) == (300, 300, 0)
        assert store.read_bars("BTCUSDT", "1h").close.tolist() == bars.close.tolist()
    assert dlq(r) == []


def test_gaps_are_logged_and_counted(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    bars = make_bars(30, symbol="BTCUSDT")
    publish(r, bars.slice(0, 10))
    publish(r, bars.slice(13, 20))  # 10, 11, 12 never arrive
    config = make_config(redis_url)
    with BarStore.in_dir(tmp_path) as store, capture_logs() as logs:
        totals = asyncio.run(run_until_idle(config, store))
        publish(r, bars.slice(25, 30))  # the next start knows the last stored bar
        asyncio.run(run_until_idle(config, store))
        stats = store.stats()
    gaps = [e for e in logs if e["event"] == "bars.gap"]
    ts = bars.ts.tolist()
    assert [(g["from_ts"], g["to_ts"], g["missing"]) for g in gaps] == [
        (ts[10], ts[12], 3),
        (ts[20], ts[24], 5),
    ]
    assert all(g["symbol"] == "BTCUSDT" and g["tf"] == "1h" for g in gaps)
    assert (totals.gaps, totals.missing) == (1, 3)
    assert stats[0].missing == 8


def test_metrics_describe_the_ingest(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    bars = make_bars(50, symbol="BTCUSDT")
    publish(r, bars)
    xadd(r, BTC, **bar_fields(T0, close=142.0))  # conflicts with the first bar
    xadd(r, BTC, **bar_fields(T0 + 1))
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)

    async def scenario() -> None:
        async with ingest_service(make_config(redis_url), store, metrics=metrics) as service:
            await service.run_until_idle()
            publish(r, bars.slice(0, 5))  # duplicates
            await service.run_until_idle()
            assert await service.refresh_lag() == {BTC: (0, 0)}
            assert service.status()["totals"]["inserted"] == 50

    with BarStore.in_dir(tmp_path) as store:
        asyncio.run(scenario())

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("quantum_bars_ingested_total", symbol="BTCUSDT", tf="1h") == 50
    assert value("quantum_bars_rejected_total", reason="conflict") == 1
    assert value("quantum_bars_rejected_total", reason="off_grid") == 1
    assert value("quantum_bars_conflicts_total") == 1
    assert value("quantum_bars_duplicates_total") == 5
    assert value("quantum_ingest_entries_total") == 57
    assert value("quantum_ingest_batch_seconds_count") >= 2
    assert value("quantum_ingest_lag", stream=BTC) == 0
    assert value("quantum_ingest_pending", stream=BTC) == 0


def test_streams_that_appear_are_discovered(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    config = make_config(redis_url, symbols=(), discover=True, discover_interval_s=0.1)
    sol = make_bars(40, symbol="SOLUSDT", tf="5m")

    async def scenario(store: BarStore) -> None:
        stop = asyncio.Event()
        async with ingest_service(config, store) as service:
            task = asyncio.create_task(service.run(stop))
            await wait_until(lambda: service.prepared, what="prepared")
            assert service.streams == {}
            publish(r, sol)
            await wait_until(lambda: store.count("SOLUSDT", "5m") == 40, what="SOL stored")
            stop.set()
            await asyncio.wait_for(task, 5)

    with BarStore.in_dir(tmp_path) as store:
        asyncio.run(scenario(store))
    assert group_state(r, KEYS.bars("SOLUSDT", "5m")) == (0, 0)


@pytest.mark.parametrize("prefix", ["quantum", "lab"])
def test_the_dlq_is_not_read_as_a_bar_stream(redis_url: str, tmp_path: Path, prefix: str) -> None:
    r = redis.Redis.from_url(redis_url)
    xadd(r, f"{prefix}:bars:dlq", reason="x")
    xadd(r, f"{prefix}:bars:ETHUSDT:1h", **bar_fields(T0))
    config = make_config(redis_url, symbols=(), discover=True)
    config = dataclasses.replace(config, redis=dataclasses.replace(config.redis, prefix=prefix))
    with BarStore.in_dir(tmp_path) as store:
        asyncio.run(run_until_idle(config, store))
        assert [s.symbol for s in store.stats()] == ["ETHUSDT"]
    assert r.xlen(f"{prefix}:bars:dlq") == 1


def test_stored_bars_equal_the_published_ones(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    btc, eth = make_bars(120, symbol="BTCUSDT", seed=1), make_bars(80, symbol="ETHUSDT", seed=2)
    publish(r, btc)
    publish(r, eth)
    config = make_config(redis_url, symbols=("BTCUSDT", "ETHUSDT"), batch_size=7)
    with BarStore.in_dir(tmp_path) as store:
        asyncio.run(run_until_idle(config, store))
        for bars in (btc, eth):
            read = store.read_bars(bars.symbol, "1h")
            assert stored_bars(read) == stored_bars(bars)


def test_an_error_inside_the_ack_transaction_is_raised(redis_url: str) -> None:
    from redis.exceptions import ResponseError

    from quantum_daemon.ingest.batch import BatchOutcome
    from quantum_daemon.ingest.wire import execute_transaction, finish_commands

    r = redis.Redis.from_url(redis_url)
    entry_id = xadd(r, BTC, **bar_fields(T0))
    r.xgroup_create(BTC, "quantum-daemon", id="0")
    r.xreadgroup("quantum-daemon", "c", {BTC: ">"})
    r.set("not-a-stream", "x")
    broken = BatchOutcome(1, {b"not-a-stream": [entry_id]}, [], {}, 0)
    good = BatchOutcome(1, {BTC.encode(): [entry_id]}, [], {}, 0)

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                await execute_transaction(client, finish(broken))
            assert await execute_transaction(client, finish(good)) == [1]  # the pool still works
        finally:
            await client.aclose()

    def finish(outcome: BatchOutcome) -> list[bytes]:
        return finish_commands(outcome, KEYS.dlq, 1000, "quantum-daemon")

    asyncio.run(scenario())
    assert group_state(r, BTC) == (0, 0)


def test_progress_is_logged_while_bars_flow(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantum_daemon.ingest import consumer

    monkeypatch.setattr(consumer, "PROGRESS_LOG_S", 0.05)
    monkeypatch.setattr(consumer, "HOUSEKEEPING_S", 0.05)
    r = redis.Redis.from_url(redis_url)
    bars = make_bars(400, symbol="BTCUSDT")

    async def scenario(store: BarStore) -> None:
        stop = asyncio.Event()
        async with ingest_service(make_config(redis_url), store) as service:
            task = asyncio.create_task(service.run(stop))
            for start in range(0, 400, 100):
                publish(r, bars.slice(start, start + 100))
                await wait_until(lambda n=start + 100: store.count() == n, what="stored")
                await asyncio.sleep(0.12)  # a few progress periods
            assert not task.done()
            stop.set()
            await asyncio.wait_for(task, 5)

    with BarStore.in_dir(tmp_path) as store, capture_logs() as logs:
        asyncio.run(scenario(store))
    progress = [e for e in logs if e["event"] == "ingest.progress"]
    assert len(progress) >= 2
    assert progress[-1]["entries"] == 400 and progress[-1]["inserted"] == 400


def test_a_failing_listener_does_not_stop_ingest(redis_url: str, tmp_path: Path) -> None:
    """A bars-stored hook that raises is logged; the bars are still stored and acked."""
    r = redis.Redis.from_url(redis_url)
    bars = make_bars(50, symbol="BTCUSDT")
    publish(r, bars)
    seen: list[int] = []

    def broken(symbol: str, tf: str, count: int) -> None:
        raise RuntimeError("listener bug")

    async def scenario(store: BarStore) -> object:
        async with ingest_service(make_config(redis_url), store) as service:
            service.on_stored.extend([broken, lambda s, tf, n: seen.append(n)])
            return await service.run_until_idle()

    with BarStore.in_dir(tmp_path) as store, capture_logs() as logs:
        totals = asyncio.run(scenario(store))
        assert store.count("BTCUSDT", "1h") == 50
    assert totals.inserted == 50 and sum(seen) == 50  # type: ignore[attr-defined]
    assert any(entry["event"] == "ingest.hook_failed" for entry in logs)
    assert group_state(r, BTC) == (0, 0)
