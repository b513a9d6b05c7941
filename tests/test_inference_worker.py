"""The inference worker process: real model families answer through it
exactly as in-process, a corrupt artifact is refused and never loaded, and a
killed worker is replaced without losing a bar's signal."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.core.features import build_features, shared_features
from quantum_daemon.core.promotion import Verdict
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import EvaluationConfig, InferenceConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference.worker import BarWindows
from quantum_daemon.models.families import load_model
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.events import parse_entry
from quantum_daemon.storage.prediction_records import RECORDS_FILE, PredictionRecords
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.offline import OfflineSpec, train_offline
from tests.conftest import make_bars
from tests.inference_helpers import Feeder, bar_at, inference, make_config
from tests.planted_family import ARTIFACT, install_version, planted_market

KEYS = Keys()
SYMBOL, TF = "TESTUSDT", "1h"


def test_shared_features_are_computed_once_per_window() -> None:
    bars, other = make_bars(300, seed=1), make_bars(300, seed=2)
    with shared_features(bars) as matrix:
        assert build_features(bars) is matrix
        assert build_features(other) is not matrix
        with pytest.raises(ValueError):
            matrix[0, 0] = 1.0  # read-only: no model can alter what the next one sees
    assert build_features(bars) is not matrix
    np.testing.assert_array_equal(build_features(bars), matrix)


def test_real_families_answer_in_the_worker_as_they_do_in_process(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    horizon = 4
    bars = make_bars(760, seed=11, symbol=SYMBOL)
    history = bars.slice(0, 700)
    params = {"xgb": {"num_boost_round": 40}, "lgbm": {}, "evo_model": {"max_evaluations": 150}}
    registry = Registry(tmp_path)
    for family, p in params.items():
        trained = train_offline(
            OfflineSpec(
                family=family,
                bars=history,
                data_dir=tmp_path,
                evaluation=EvaluationConfig(horizon=horizon, n_test_windows=1),
                params=p,
            )
        )
        registry.register(trained.model_id, trained.version)
        registry.apply_verdict(
            trained.model_id, trained.version, Verdict("candidate", (), True, "")
        )
    cfg = make_config(redis_url, tmp_path, horizon=horizon)

    async def scenario() -> None:
        async with inference(cfg, families=()) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(700)
            await service.run_until_idle()
            await feeder.feed(710)

    asyncio.run(scenario())
    signals = [parse_signal(f) for _, f in redis_client.xrange(KEYS.signals(SYMBOL, TF))]
    assert [s.ts for s in signals] == [int(t) for t in bars.ts[699:710]]
    last = signals[-1]
    context = InferenceConfig().context_bars
    window = bars.slice(710 - context - 1, 710)  # the context before the one new bar
    for c in last.contributions:
        model, _ = load_model(registry.version_path(c.model, c.version))
        expected = model.predict(window, np.array([len(window) - 1]))
        assert c.mu == pytest.approx(float(expected.mu[0]), rel=1e-9, abs=1e-12)
        assert c.p_up == pytest.approx(float(expected.p_up[0]), rel=1e-9, abs=1e-12)
    assert {c.family for c in last.contributions} == set(params)
    positions = (
        PredictionRecords(tmp_path / RECORDS_FILE)
        .connection()
        .execute("SELECT DISTINCT position FROM predictions WHERE family = 'evo_model'")
    )
    assert {p for (p,) in positions} <= {-1.0, 0.0, 1.0}


def test_a_corrupt_artifact_is_refused_and_the_others_still_answer(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    install_version(tmp_path, "xgb", {})
    bad = install_version(tmp_path, "lgbm", {"until_ts": 0})
    registry = Registry(tmp_path)
    artifact = registry.version_path("lgbm_TESTUSDT_1h", bad) / ARTIFACT
    artifact.write_text(artifact.read_text() + " ")
    bars = planted_market(20, 2)

    async def scenario() -> None:
        async with inference(make_config(redis_url, tmp_path), ("xgb", "lgbm")) as (service, store):
            await Feeder(service, store, bars).feed(12)
            assert service.live_families == ("xgb",)
            assert service.totals.refused == 1

    asyncio.run(scenario())
    assert registry.stage("lgbm_TESTUSDT_1h", bad) == "retired"
    types = [parse_entry(f).type for _, f in redis_client.xrange(KEYS.events)]
    assert "model.load_refused" in types and "model.retired" in types
    last = parse_signal(redis_client.xrevrange(KEYS.signals(SYMBOL, TF), count=1)[0][1])
    assert [c.family for c in last.contributions] == ["xgb"]
    assert redis_client.get(KEYS.trust("lgbm")) is None


def test_a_killed_worker_is_replaced_and_no_bar_loses_its_signal(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    install_version(tmp_path, "xgb", {})
    bars = planted_market(16, 2)

    async def scenario() -> int:
        async with inference(make_config(redis_url, tmp_path), ("xgb",)) as (service, store):
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for name, loop in service.loops().items():
                    tg.create_task(loop(stop), name=name)
                feeder = Feeder(service, store, bars)
                for t in range(1, 17):
                    if t == 8:
                        first_pid = service.link.pid
                        assert first_pid is not None
                        os.kill(first_pid, signal.SIGKILL)
                    feeder.store_until(t)
                    await _until(lambda t=t: service.totals.signals == t, timeout_s=60)
                assert service.link.pid != first_pid
                stop.set()
            return service.link.restarts

    assert asyncio.run(scenario()) == 1
    stream = [parse_signal(f).ts for _, f in redis_client.xrange(KEYS.signals(SYMBOL, TF))]
    assert stream == [int(t) for t in bars.ts[:16]]


async def _until(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_the_rolling_window_is_what_a_fresh_read_of_the_store_gives(tmp_path: Path) -> None:
    bars = make_bars(60, seed=4, symbol=SYMBOL)
    store = BarStore.in_dir(tmp_path)
    store.insert_bars([bar_at(bars, t) for t in range(50) if t != 45])  # bar 45 comes late
    windows = BarWindows(store, context=20)

    def same(got: Bars, last_n: int) -> None:
        fresh = store.read_bars(SYMBOL, TF, last_n=last_n)
        np.testing.assert_array_equal(got.ts, fresh.ts)
        np.testing.assert_array_equal(got.close, fresh.close)

    same(windows.read(SYMBOL, TF, None, 10), 21)  # the newest bar and its context
    store.insert_bars([bar_at(bars, 50), bar_at(bars, 51)])
    same(windows.read(SYMBOL, TF, int(bars.ts[49]), 10), 22)
    store.insert_bars([bar_at(bars, 45), bar_at(bars, 52)])  # one inside the window
    same(windows.read(SYMBOL, TF, int(bars.ts[51]), 10), 21)
    assert int(bars.ts[45]) in windows.read(SYMBOL, TF, int(bars.ts[51]), 10).ts
    store.close()


def test_a_hung_worker_is_killed_and_replaced(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    install_version(tmp_path, "xgb", {"hang_once": str(tmp_path / "hung")})
    bars = planted_market(6, 2)

    async def scenario() -> int:
        async with inference(make_config(redis_url, tmp_path), ("xgb",)) as (service, store):
            service.request_timeout_s = 1.0
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for name, loop in service.loops().items():
                    tg.create_task(loop(stop), name=name)
                feeder = Feeder(service, store, bars)
                for t in range(1, 7):
                    feeder.store_until(t)
                    await _until(lambda t=t: service.totals.signals == t, timeout_s=60)
                stop.set()
            return service.link.restarts

    assert asyncio.run(scenario()) == 1
    assert (tmp_path / "hung").exists()
    stream = [parse_signal(f).ts for _, f in redis_client.xrange(KEYS.signals(SYMBOL, TF))]
    assert stream == [int(t) for t in bars.ts[:6]]
