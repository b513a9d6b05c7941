"""The continuous-learning loop in one service, on real Redis, a real bar store
and real spawn workers: models train at start-up, are evaluated and promoted
or rejected with events; a killed or overrunning job fails alone; new bars
retrain, and a better version waits in shadow as a candidate (or, without a
shadow period, replaces the active one); an altered artifact is refused; a
restart keeps the active versions."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from quantum_daemon.domain.config import Config, PromotionConfig
from quantum_daemon.lifecycle.service import LifecycleService
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.executor import PoolCrashLoop
from quantum_daemon.training.jobs import run_job
from tests.judge_rules import OLD_RULES
from tests.lifecycle_harness import (
    BAD,
    BETTER,
    GOOD,
    add_bars,
    events,
    make_config,
    of_model,
    plan,
    published,
    run_service,
    wait_until,
    with_timeout,
)

XGB, LGBM = "xgb_BTCUSDT_1h", "lgbm_BTCUSDT_1h"
STARTED_TO_EVALUATED = [
    "training.started",
    "training.completed",
    "model.registered",
    "model.evaluated",
]


@pytest.fixture
def store(tmp_path: Path) -> BarStore:
    with BarStore.in_dir(tmp_path) as bar_store:
        add_bars(bar_store, 400)
        yield bar_store


def test_models_train_at_startup_and_are_promoted_or_rejected_with_events(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url, families=("xgb", "lgbm"))
    plan(tmp_path, xgb=GOOD, lgbm=BAD)
    done = published(redis_client, ("model.promoted", XGB), ("model.rejected", LGBM))
    svc = asyncio.run(run_service(cfg, store, done))
    got = events(redis_client)
    assert of_model(got, XGB) == [*STARTED_TO_EVALUATED, "model.promoted"]
    assert of_model(got, LGBM) == [*STARTED_TO_EVALUATED, "model.rejected"]
    evaluated = next(e for e in got if e.type == "model.evaluated" and e.model_id == XGB)
    assert evaluated.data["metrics"] == GOOD
    rejected = next(e for e in got if e.type == "model.rejected")
    assert rejected.data["gate"] == "min_trades"
    for event in got:
        for key in ("model_id", "family", "symbol", "tf", "version", "timestamp"):
            assert event.data.get(key), (event.type, key)
    assert {m["model_id"]: m["active"] is not None for m in svc.models} == {XGB: True, LGBM: False}
    assert svc.metrics.totals() == {"done": 2, "failed": 0}
    assert [j["stage"] for j in svc.jobs_view()["recent"]].count("active") == 1


def test_a_restart_keeps_the_active_version_and_does_not_retrain_it(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url)
    plan(tmp_path, xgb=GOOD)
    asyncio.run(run_service(cfg, store, published(redis_client, ("model.promoted", XGB))))
    active = Registry(tmp_path).active_version(XGB)
    assert active is not None

    def settled(svc: LifecycleService) -> bool:
        return bool(svc.models)

    svc = asyncio.run(run_service(cfg, store, settled))
    assert svc.scheduler.pending() == [] and svc.jobs == {}
    assert Registry(tmp_path).active_version(XGB) == active
    assert of_model(events(redis_client), XGB).count("training.started") == 1


def test_a_worker_killed_mid_job_fails_its_job_and_the_next_job_runs(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url, families=("xgb", "lgbm"))
    plan(tmp_path, xgb="crash", lgbm=GOOD)
    done = published(redis_client, ("training.failed", XGB), ("model.promoted", LGBM))
    svc = asyncio.run(run_service(cfg, store, done))
    failed = next(e for e in events(redis_client) if e.type == "training.failed")
    assert failed.data["status"] == "crashed"
    assert failed.data["reason"] == "worker killed by SIGKILL"
    assert svc.metrics.totals() == {"done": 1, "failed": 1}


def test_a_job_past_its_time_limit_is_stopped(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = with_timeout(make_config(tmp_path, redis_url), 1.5)
    plan(tmp_path, xgb="hang")
    asyncio.run(run_service(cfg, store, published(redis_client, ("training.failed", XGB))))
    failed = next(e for e in events(redis_client) if e.type == "training.failed")
    assert failed.data["status"] == "timeout"
    assert failed.data["reason"] == "time limit of 1.5s exceeded"


def retrain_with_better_metrics(
    cfg: Config, tmp_path: Path, redis_client: redis.Redis, store: BarStore
) -> LifecycleService:
    """Train a first version, then store 100 bars with better metrics planned:
    the second version beats the first head to head."""
    plan(tmp_path, xgb=GOOD)

    async def more_bars(svc: LifecycleService) -> None:
        for _ in range(600):
            if svc.models and svc.models[0]["active"]:
                break
            await asyncio.sleep(0.05)
        plan(tmp_path, xgb=BETTER)
        await asyncio.to_thread(add_bars, store, 100, 400)
        svc.on_bars_stored("BTCUSDT", "1h", 100)

    def two_evaluated(svc: LifecycleService) -> bool:
        judged = of_model(events(redis_client), XGB).count("model.evaluated") == 2
        return judged and not svc.jobs

    return asyncio.run(run_service(cfg, store, two_evaluated, during=more_bars))


def test_new_bars_retrain_and_a_better_version_waits_in_shadow_as_a_candidate(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url)
    svc = retrain_with_better_metrics(cfg, tmp_path, redis_client, store)
    registry = Registry(tmp_path)
    first, second = [v.version for v in registry.versions(XGB)]
    assert (registry.stage(XGB, first), registry.stage(XGB, second)) == ("active", "candidate")
    assert of_model(events(redis_client), XGB).count("model.promoted") == 1
    verdict = next(v for v in registry.show(XGB)["versions"] if v["version"] == second)["verdict"]
    assert verdict["promote"] is False and "waits in shadow" in verdict["reason"]
    assert sorted(j["stage"] for j in svc.jobs_view()["recent"]) == ["active", "candidate"]
    started = [e for e in events(redis_client) if e.type == "training.started"]
    assert started[-1].data["reasons"] == ["bars"]


def test_without_a_shadow_period_a_better_version_replaces_the_active_one(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url)
    cfg = replace(cfg, promotion=replace(cfg.promotion, shadow_min_bars=0))
    retrain_with_better_metrics(cfg, tmp_path, redis_client, store)
    registry = Registry(tmp_path)
    first, second = [v.version for v in registry.versions(XGB)]
    assert (registry.stage(XGB, first), registry.active_version(XGB)) == ("retired", second)
    promoted = [e for e in events(redis_client) if e.type == "model.promoted"][-1]
    assert promoted.data["from"] == first and promoted.data["to"] == second


def test_an_altered_active_artifact_is_refused_at_startup_and_the_model_retrains(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url)
    plan(tmp_path, xgb=GOOD)
    asyncio.run(run_service(cfg, store, published(redis_client, ("model.promoted", XGB))))
    registry = Registry(tmp_path)
    altered = registry.active_version(XGB)
    assert altered is not None
    (artifacts.model_dir(tmp_path, XGB) / altered / "weights.bin").write_bytes(b"tampered")

    def retrained(svc: LifecycleService) -> bool:
        return of_model(events(redis_client), XGB).count("model.promoted") == 2

    asyncio.run(run_service(cfg, store, retrained))
    refused = next(e for e in events(redis_client) if e.type == "model.load_refused")
    assert refused.data["version"] == altered and "sha256" in refused.data["reason"]
    assert registry.stage(XGB, altered) == "retired"
    assert registry.active_version(XGB) not in (None, altered)


def test_the_real_training_job_trains_evaluates_and_compares_head_to_head(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """run_job in a spawn worker: xgboost walk-forward, a version folder, and
    for the second version a head-to-head comparison with the active one."""
    cfg = make_config(tmp_path, redis_url)
    cfg = replace(
        cfg,
        training=replace(cfg.training, history_bars=900),
        promotion=PromotionConfig(min_trades=0, min_profit_factor=0.0, **OLD_RULES),
    )

    async def retrain(svc: LifecycleService) -> None:
        await wait_until(svc, published(redis_client, ("model.promoted", XGB)), 240)
        svc.loop.request(XGB)

    def second_judged(_: LifecycleService) -> bool:
        return of_model(events(redis_client), XGB).count("model.evaluated") == 2

    with BarStore.in_dir(tmp_path) as bar_store:
        add_bars(bar_store, 1000)
        asyncio.run(run_service(cfg, bar_store, second_judged, 240, run_job, during=retrain))
    evaluated = [e for e in events(redis_client) if e.type == "model.evaluated"]
    assert {"trades", "sharpe", "dsr", "profit_factor", "mase"} <= set(evaluated[0].data["metrics"])
    first, second = (e.data["version"] for e in evaluated)
    entry = next(v for v in Registry(tmp_path).show(XGB)["versions"] if v["version"] == second)
    h2h = entry["head_to_head"]
    assert h2h["active_version"] == first and h2h["n_decisions"] > 0
    assert [g["gate"] for g in entry["verdict"]["gates"]][-1] == "beats_active"
    registry = Registry(tmp_path)
    registry.verify(XGB, second)  # the artifact the worker wrote passes its sha256 check


def test_a_crash_loop_past_the_restart_budget_ends_the_service(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url)
    cfg = replace(cfg, training=replace(cfg.training, restart_budget=0))
    plan(tmp_path, xgb="crash")
    with pytest.raises(BaseExceptionGroup) as caught:
        asyncio.run(run_service(cfg, store, lambda _: False, timeout_s=60))
    assert caught.group_contains(PoolCrashLoop)
    failed = [e for e in events(redis_client) if e.type == "training.failed"]
    assert [e.data["status"] for e in failed] == ["crashed"]


def test_at_shutdown_a_running_job_is_cancelled_and_its_failure_still_published(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url)
    cfg = replace(cfg, daemon=replace(cfg.daemon, grace_s=2.5))  # the scheduler drains 0.5 s
    plan(tmp_path, xgb="hang")

    def running(svc: LifecycleService) -> bool:
        return bool(svc.jobs)

    asyncio.run(run_service(cfg, store, running))
    failed = [e for e in events(redis_client) if e.type == "training.failed"]
    assert [(e.data["status"], e.data["reason"]) for e in failed] == [
        ("cancelled", "daemon stopping")
    ]
    assert Registry(tmp_path).pending_events() == []
