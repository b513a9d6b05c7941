"""The recorded ensemble signals: read back from a real Redis stream written in
the inference service's format, and carried by the lifecycle's rl_sizer jobs
(and by no other job) into the training worker."""

from __future__ import annotations

import asyncio
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from quantum_daemon.core.ensemble import MemberForecast, build_signal, combine, signal_fields
from quantum_daemon.domain.keys import Keys
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.recorded_signals import RecordedSignals, read_recorded_signals
from tests import jobs_for_tests
from tests.lifecycle_harness import GOOD, add_bars, make_config, plan, published, run_service

KEYS = Keys("quantum")
STREAM = KEYS.signals("BTCUSDT", "1h")
HOUR = 3_600_000
T0 = 1_704_067_200_000


def signal_entry(ts: int, mu: float, p_up: float) -> dict[str, str]:
    """A signal's stream fields exactly as the inference service writes them."""
    member = MemberForecast("xgb", "xgb_BTCUSDT_1h", "v20240101_000000", mu, p_up)
    ensemble = combine([member], {"xgb": 1.0})
    return signal_fields(build_signal("BTCUSDT", "1h", ts, ensemble, None, latency_ms=3.0))


def read(redis_url: str, page: int = 1_000) -> RecordedSignals:
    async def go() -> RecordedSignals:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await read_recorded_signals(client, KEYS, "BTCUSDT", "1h", page=page)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_entries_come_back_as_arrays_in_ts_order_the_last_of_a_bar_winning(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # Stream order is not bar order: a replay re-published bar 2 and bar 0 late.
    for k, mu in ((1, 0.01), (2, 0.02), (3, 0.03), (0, 0.00), (2, -0.02)):
        redis_client.xadd(STREAM, signal_entry(T0 + k * HOUR, mu, 0.5 + 10 * mu))
    got = read(redis_url, page=2)  # several pages
    np.testing.assert_array_equal(got.ts, T0 + np.arange(4) * HOUR)
    np.testing.assert_allclose(got.mu, [0.0, 0.01, -0.02, 0.03])
    np.testing.assert_allclose(got.p_up, [0.5, 0.6, 0.3, 0.8])
    assert got.ts.dtype == np.int64 and got.skipped == 0


def test_a_malformed_entry_is_skipped_and_counted(
    redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.xadd(STREAM, signal_entry(T0, 0.01, 0.6))
    bad = [
        {"ts": "soon", "mu": "0.1", "p_up": "0.5"},
        {"ts": str(T0 + HOUR), "p_up": "0.5"},
        {**signal_entry(T0 + 2 * HOUR, 0.0, 0.5), "mu": "nan"},
        {**signal_entry(T0 + 3 * HOUR, 0.0, 0.5), "p_up": "1.5"},
        {**signal_entry(T0, 0.0, 0.5), "ts": str(2**63)},  # parses, but no int64 holds it
        {**signal_entry(T0, 0.0, 0.5), "ts": "-1"},
    ]
    for fields in bad:
        redis_client.xadd(STREAM, fields)
    redis_client.xadd(STREAM, signal_entry(T0 + 4 * HOUR, -0.01, 0.4))
    got = read(redis_url)
    np.testing.assert_array_equal(got.ts, [T0, T0 + 4 * HOUR])
    np.testing.assert_allclose(got.mu, [0.01, -0.01])
    assert got.skipped == 6


def test_a_missing_or_empty_stream_gives_no_signals(
    redis_url: str, redis_client: redis.Redis
) -> None:
    missing = read(redis_url)
    assert len(missing) == 0 and missing.skipped == 0
    redis_client.xadd(STREAM, signal_entry(T0, 0.01, 0.6))
    redis_client.xtrim(STREAM, maxlen=0)
    assert len(read(redis_url)) == 0


def test_lookup_and_fraction_by_bar_open_time() -> None:
    recorded = RecordedSignals.from_rows([(T0 + HOUR, 0.1, 0.6), (T0 + 3 * HOUR, 0.2, 0.7)])
    bar_ts = T0 + np.arange(5) * HOUR
    np.testing.assert_array_equal(recorded.positions(bar_ts), [-1, 0, -1, 1, -1])
    assert recorded.recorded_fraction(bar_ts) == pytest.approx(0.4)
    assert recorded.recorded_fraction(bar_ts[:0]) == 0.0
    assert RecordedSignals.empty().recorded_fraction(bar_ts) == 0.0
    np.testing.assert_array_equal(recorded.until(T0 + 2 * HOUR).ts, [T0 + HOUR])
    assert len(recorded.until(None)) == 0


def test_recorded_signals_are_frozen_and_travel_to_workers() -> None:
    recorded = RecordedSignals.from_rows([(T0, 0.1, 0.6)], skipped=2)
    again = pickle.loads(pickle.dumps(recorded))
    np.testing.assert_array_equal(again.ts, recorded.ts)
    assert again.skipped == 2
    with pytest.raises(AttributeError):
        recorded.skipped = 0  # type: ignore[misc]
    with pytest.raises(ValueError, match="increasing"):
        RecordedSignals(np.array([2, 1]), np.zeros(2), np.zeros(2))


def test_the_lifecycle_gives_rl_sizer_jobs_the_streams_signals(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """Through a real service and a spawn worker: the rl_sizer job's spec
    carries what the signal stream holds up to the job's last bar; the xgb
    job's carries nothing."""
    with BarStore.in_dir(tmp_path) as store:
        add_bars(store, 400)
        ts = store.read_bars("BTCUSDT", "1h").ts[-50:]
        for k, bar_ts in enumerate(ts):
            redis_client.xadd(STREAM, signal_entry(int(bar_ts), 0.001 * k, 0.5))
        redis_client.xadd(STREAM, {"ts": "garbage"})
        # a bar stored and answered after the job read its bars: not the job's to see
        redis_client.xadd(STREAM, signal_entry(int(ts[-1]) + HOUR, 0.9, 0.9))
        cfg = make_config(tmp_path, redis_url, families=("xgb", "rl_sizer"))
        plan(tmp_path, xgb=GOOD, rl_sizer=GOOD)
        done = published(
            redis_client,
            ("model.promoted", "xgb_BTCUSDT_1h"),
            ("model.promoted", "rl_sizer_BTCUSDT_1h"),
        )
        asyncio.run(run_service(cfg, store, done, job_fn=jobs_for_tests.fake_train_noting_signals))
    assert json.loads((tmp_path / "signals_seen_xgb.json").read_text()) is None
    sizer = json.loads((tmp_path / "signals_seen_rl_sizer.json").read_text())
    assert sizer["ts"] == [int(t) for t in ts]
    np.testing.assert_allclose(sizer["mu"], 0.001 * np.arange(50))
    assert sizer["skipped"] == 1
