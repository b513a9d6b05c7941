"""The simulation's batch predictions are what the live inference worker
publishes for the same bars: real families trained and registered, the live
worker (real process, Redis, SQLite) answering a backlog of bars, and the
simulation's ``predict_span`` over the same span, family by family."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import redis

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.core.evaluation.backtest import cost_rate
from quantum_daemon.core.promotion import Verdict
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import EvaluationConfig, InferenceConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.simulate.predict_job import (
    PredictSpec,
    SizeRequest,
    SizeSpec,
    predict_span,
    size_bar,
)
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.offline import OfflineSpec, train_offline
from tests.conftest import make_bars
from tests.inference_helpers import Feeder, inference, make_config

SYMBOL, TF = "TESTUSDT", "1h"
PROMOTE = Verdict("candidate", (), True, "")  # passed every gate; promoted as the first version


def promoted_versions(
    bars: Bars, params: dict[str, dict[str, Any]], horizon: int, data_dir: Path
) -> dict[str, Path]:
    """One version per family trained on ``bars``, registered and promoted:
    the version folder of each."""
    registry = Registry(data_dir)
    paths = {}
    for family, p in params.items():
        evaluation = EvaluationConfig(horizon=horizon, n_test_windows=1)
        trained = train_offline(OfflineSpec(family, bars, data_dir, evaluation, params=p))
        registry.register(trained.model_id, trained.version)
        registry.apply_verdict(
            trained.model_id, trained.version, Verdict("candidate", (), True, "")
        )
        paths[family] = registry.version_path(trained.model_id, trained.version)
    return paths


def test_batch_predictions_equal_what_the_live_worker_publishes(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    horizon, first, stop = 4, 700, 760
    bars = make_bars(stop, seed=21, symbol=SYMBOL)
    params = {"xgb": {"num_boost_round": 40}, "lgbm": {}, "evo_model": {"max_evaluations": 150}}
    paths = promoted_versions(bars.slice(0, first), params, horizon, tmp_path)
    cfg = make_config(redis_url, tmp_path, horizon=horizon)

    async def scenario() -> None:
        async with inference(cfg, families=()) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(first)
            await service.run_until_idle()
            feeder.store_until(stop)  # a backlog of 60 bars, answered in one request
            await service.run_until_idle()

    asyncio.run(scenario())
    signals = [parse_signal(f) for _, f in redis_client.xrange(Keys().signals(SYMBOL, TF))]
    live = {s.ts: {c.family: (c.mu, c.p_up) for c in s.contributions} for s in signals}
    context = InferenceConfig().context_bars
    span = bars.slice(first - context, stop)
    for family, path in paths.items():
        batch = predict_span(PredictSpec("t", family, str(path), span, context))
        for k, ts in enumerate(bars.ts[first:stop]):
            assert live[int(ts)][family] == (batch.mu[k], batch.p_up[k]), (family, k)
    assert len(live) == stop - first + 1
    assert np.isfinite([v for s in live.values() for m in s.values() for v in m]).all()


def test_the_sizing_job_decides_what_the_live_worker_publishes(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """``size_bar``, fed each bar's ensemble and the book it returned for the
    bar before, gives the positions the live worker published bar by bar."""
    horizon, first, stop = 4, 700, 740
    bars = make_bars(stop, seed=22, symbol=SYMBOL)
    params = {
        "lgbm": {},
        "rl_sizer": {"total_timesteps": 2048, "eval_every": 1024, "n_steps": 512},
    }
    paths = promoted_versions(bars.slice(0, first), params, horizon, tmp_path)
    cfg = make_config(redis_url, tmp_path, horizon=horizon)

    async def scenario() -> None:
        async with inference(cfg, families=()) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(first)
            await service.run_until_idle()
            await feeder.feed(stop)  # one bar at a time, as a live feed

    asyncio.run(scenario())
    signals = [parse_signal(f) for _, f in redis_client.xrange(Keys().signals(SYMBOL, TF))]
    sized = [s for s in signals if s.position_source == "rl_sizer"]
    assert len(sized) >= stop - first
    context = InferenceConfig().context_bars
    rate = cost_rate(cfg.evaluation.fee_bps, cfg.evaluation.slippage_bps)
    held = None
    for s in sized:
        i = int(np.searchsorted(bars.ts, s.ts))
        request = SizeRequest(
            ("m", "v", SYMBOL), str(paths["rl_sizer"]), bars.slice(i - context, i + 1),
            s.mu, s.p_up, held,
        )  # fmt: skip
        [held] = size_bar(SizeSpec("t", (request,), rate))
        assert held.position == s.position, (i, held.position, s.position)
    assert len({s.position for s in sized}) > 1  # the sizer moved: the check is not vacuous
