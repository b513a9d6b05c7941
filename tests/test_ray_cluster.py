"""Ray without a shared disk, on a real multi-node cluster on this machine
(``tests.ray_cluster``): jobs of every family run on the worker node by value
and their versions are committed by the daemon side, while an audit hook in
every process of the nodes records any file event under the daemon's data
dir; GPU requests reach the remote task; a node killed mid-job fails its job
and leaves no version behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_daemon.domain.config import EvaluationConfig
from quantum_daemon.domain.params.catalog import ParamTables
from quantum_daemon.lifecycle.service import LifecycleService
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.executor import JobFn, JobOutcome
from quantum_daemon.training.jobs import ActiveRef, TrainJobResult, TrainJobSpec, run_job
from quantum_daemon.training.ray_backend import RayExecutor, RaySettings
from tests import ray_cluster
from tests.conftest import make_bars
from tests.lifecycle_harness import (
    add_bars,
    events,
    make_config,
    published,
    run_service,
    wait_until,
)
from tests.ray_cluster import PathProbe, Probe, RayCluster, lgbm_hangs_once

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

NEURAL = dict(max_steps=20, eval_every=10, patience=2, batch_size=32, device="cpu", threads=1)
TINY: dict[str, dict[str, Any]] = {
    "xgb": {"num_boost_round": 20, "early_stopping_rounds": 5},
    "lgbm": {"num_boost_round": 20, "early_stopping_rounds": 5},
    "nhits": {
        "lookback": 24, "pool_kernels": [4, 2, 1], "downsample": [6, 2, 1], "hidden": 16,
        **NEURAL,
    },
    "patchtst": {
        "lookback": 32, "patch_len": 8, "stride": 4, "d_model": 8, "n_heads": 2,
        "n_layers": 1, "d_ff": 16, **NEURAL,
    },
    "evo_model": {"max_evaluations": 200, "patience": 5},
    "rl_sizer": {"total_timesteps": 256, "eval_every": 128, "n_steps": 128, "batch_size": 64,
                 "n_epochs": 1},
}  # fmt: skip
EVALUATION = EvaluationConfig(horizon=4, n_test_windows=2)
WHEN = datetime(2024, 3, 1, tzinfo=UTC)
XGB, LGBM = "xgb_BTCUSDT_1h", "lgbm_BTCUSDT_1h"


@pytest.fixture(scope="module")
def daemon_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("daemon-data")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, daemon_dir: Path) -> Iterator[RayCluster]:
    root = Path(os.environ.get("QD_RAY_TEST_ROOT", "/tmp")) / f"qdray-{os.getpid()}"
    nodes = RayCluster(root, forbidden=daemon_dir)
    saved_env = {var: os.environ.get(var) for var in nodes.auth_env()}
    try:
        nodes.start()
        nodes.connect(ray)
        nodes.wait_for_cpus(ray)
        yield nodes
    finally:
        nodes.disconnect(ray, saved_env)
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)  # the nodes' sessions and logs


def settings(cluster: RayCluster, daemon_dir: Path, **fields: Any) -> RaySettings:
    return RaySettings(
        address=cluster.address, max_jobs=1, log_level="warning", data_dir=str(daemon_dir),
        **fields,
    )  # fmt: skip


def run_all(executor_settings: RaySettings, jobs: list[tuple[JobFn, Any, str]],
            timeout_s: float = 300.0) -> list[JobOutcome]:  # fmt: skip
    async def main() -> list[JobOutcome]:
        outcomes = []
        async with RayExecutor(executor_settings) as executor:
            for n, (fn, spec, family) in enumerate(jobs):
                assert executor.reserve(family)
                outcomes.append(
                    await executor.run(fn, spec, family=family, job_id=f"j{n}", timeout_s=timeout_s)
                )
        return outcomes

    return asyncio.run(main())


def job(family: str, n: int, daemon_dir: Path, **fields: Any) -> TrainJobSpec:
    """A job as the daemon makes it: its data dir is the daemon's."""
    bars = make_bars(700, seed=3, symbol="BTCUSDT")
    fields.setdefault("params", TINY[family])
    return TrainJobSpec(
        job_id=f"{family}-{n}", family=family, bars=bars, data_dir=str(daemon_dir),
        version_time=WHEN + timedelta(days=n), evaluation=EVALUATION, seed=7, **fields,
    )  # fmt: skip


def test_the_audit_sees_a_worker_that_opens_the_data_dir(
    cluster: RayCluster, daemon_dir: Path
) -> None:
    secret = daemon_dir / "probe.bin"
    secret.write_bytes(b"12345")
    try:
        probe = (ray_cluster.open_path, PathProbe(str(secret)), "xgb")
        [outcome] = run_all(settings(cluster, daemon_dir), [probe])
        assert outcome.ok and outcome.result == 5, outcome
        assert any(str(secret) in line for line in cluster.forbidden_opens())
    finally:
        secret.unlink()
        cluster.clear_forbidden_opens()


def test_jobs_of_every_family_run_on_the_worker_node_by_value(
    cluster: RayCluster, daemon_dir: Path
) -> None:
    cluster.clear_forbidden_opens()
    families = list(TINY)
    outcomes = run_all(
        settings(cluster, daemon_dir), [(run_job, job(f, 0, daemon_dir), f) for f in families]
    )
    registry = Registry(daemon_dir)
    for family, outcome in zip(families, outcomes, strict=True):
        assert outcome.ok, (family, outcome.reason, outcome.detail[-3000:])
        result: TrainJobResult = outcome.result
        assert Path(result.artifact_dir) == daemon_dir / "models" / result.model_id / result.version
        stored = artifacts.load_version(Path(result.artifact_dir))  # every sha256 checked here
        assert stored.metadata["family"] == family
        assert result.pid in cluster.audited_pids()  # ran on a node, under the audit hook
        registry.register(result.model_id, result.version, result.head_to_head, result.job_id)
        assert registry.stage(result.model_id, result.version).value == "trained"
    assert cluster.forbidden_opens() == []
    assert not list(daemon_dir.glob("models/*/.tmp-*"))


def test_the_active_version_travels_to_the_worker_for_the_head_to_head(
    cluster: RayCluster, daemon_dir: Path
) -> None:
    cluster.clear_forbidden_opens()
    executor_settings = settings(cluster, daemon_dir)
    [first] = run_all(executor_settings, [(run_job, job("xgb", 10, daemon_dir), "xgb")])
    assert first.ok, first.reason
    active = ActiveRef(first.result.version, first.result.artifact_dir)
    second_job = job("xgb", 11, daemon_dir, active=active)
    [second] = run_all(executor_settings, [(run_job, second_job, "xgb")])
    assert second.ok, (second.reason, second.detail[-3000:])
    h2h = second.result.head_to_head
    assert h2h is not None and not h2h.refused
    assert h2h.active_version == first.result.version and h2h.n_decisions > 0
    assert cluster.forbidden_opens() == []


def test_a_shipped_version_the_daemon_refuses_fails_its_job_and_keeps_nothing(
    cluster: RayCluster, daemon_dir: Path
) -> None:
    spec = job("xgb", 30, daemon_dir)
    first, again = run_all(settings(cluster, daemon_dir), [(run_job, spec, "xgb")] * 2)
    assert first.ok, first.reason
    assert again.status == "error" and "exists already" in again.reason, again
    assert artifacts.list_versions(daemon_dir, spec.model_id).count(first.result.version) == 1
    assert not list(daemon_dir.glob("models/*/.tmp-*"))


def test_gpu_requests_reach_the_remote_task(cluster: RayCluster, daemon_dir: Path) -> None:
    chosen = settings(cluster, daemon_dir, num_gpus=0.5, family_num_gpus={"patchtst": 1.0})
    probe = ray_cluster.assigned_resources
    nhits, patchtst, xgb = (
        o.result
        for o in run_all(chosen, [(probe, Probe(), f) for f in ("nhits", "patchtst", "xgb")])
    )
    assert nhits["resources"] == {"CPU": 1.0, "GPU": 0.5}
    assert patchtst["resources"] == {"CPU": 1.0, "GPU": 1.0}
    assert xgb["resources"] == {"CPU": 1.0} and xgb["cuda"] == ""
    off = settings(cluster, daemon_dir, num_gpus=0.5, gpu=False)
    [hidden] = run_all(off, [(probe, Probe(), "nhits")])
    assert hidden.result["resources"] == {"CPU": 1.0} and hidden.result["cuda"] == ""


def test_a_node_lost_mid_job_fails_the_job_and_commits_nothing(
    cluster: RayCluster, daemon_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    spec = job("lgbm", 20, daemon_dir, params={"marker": str(marker)})
    model_dir = artifacts.model_dir(daemon_dir, spec.model_id)
    before = artifacts.list_versions(daemon_dir, spec.model_id)

    async def main() -> tuple[JobOutcome, JobOutcome]:
        async with RayExecutor(settings(cluster, daemon_dir)) as executor:
            running = asyncio.create_task(
                executor.run(
                    ray_cluster.train_then_hang, spec, family="lgbm", job_id="lost", timeout_s=300
                )
            )
            await wait_for(marker.exists, 120)
            assert cluster.worker is not None
            await asyncio.to_thread(cluster.worker.kill)
            lost = await asyncio.wait_for(running, 120)
            await asyncio.to_thread(cluster.start_worker)
            await asyncio.to_thread(cluster.wait_for_cpus, ray)
            next_job = job("xgb", 21, daemon_dir)
            after = await executor.run(
                run_job, next_job, family="xgb", job_id="next", timeout_s=300
            )
            return lost, after

    lost, after = asyncio.run(main())
    assert lost.status == "crashed" and "died" in lost.reason, lost
    assert artifacts.list_versions(daemon_dir, spec.model_id) == before  # nothing committed
    assert not model_dir.exists() or not list(model_dir.glob(".tmp-*"))
    assert after.ok, (after.reason, after.detail[-3000:])  # the executor goes on


def test_the_lifecycle_trains_through_the_cluster_and_outlives_a_lost_node(
    cluster: RayCluster, daemon_dir: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """The daemon's own lifecycle on backend = "ray": the first lgbm job's
    node is killed mid-job, its job fails with an event and registers
    nothing, a new node joins, and training goes on."""
    data_dir = daemon_dir / "lifecycle"  # under the audited folder
    cfg = make_config(data_dir, redis_url, families=("xgb", "lgbm"))
    params = ParamTables.from_toml({f: TINY[f] for f in ("xgb", "lgbm")}, "models.params")
    cfg = replace(
        cfg,
        training=replace(cfg.training, backend="ray", ray_address=cluster.address,
                         history_bars=600),
        evaluation=EVALUATION,
        models=replace(cfg.models, params=params),
    )  # fmt: skip
    cluster.clear_forbidden_opens()

    async def lose_the_node(svc: LifecycleService) -> None:
        await wait_for((cluster.audit / ray_cluster.HUNG_MARKER).exists, 180)
        assert cluster.worker is not None
        await asyncio.to_thread(cluster.worker.kill)
        await wait_until(svc, published(redis_client, ("training.failed", LGBM)), 120)
        await asyncio.to_thread(cluster.start_worker)
        svc.loop.request(LGBM)  # the daemon goes on: the model trains again

    def trained_after_the_loss(_: LifecycleService) -> bool:
        types = [(e.type, e.model_id) for e in events(redis_client)]
        if ("training.failed", LGBM) not in types:
            return False
        after = types[types.index(("training.failed", LGBM)) :]
        return ("model.registered", LGBM) in after

    with BarStore.in_dir(data_dir) as store:
        add_bars(store, 700)
        svc = asyncio.run(
            run_service(cfg, store, trained_after_the_loss, 200, lgbm_hangs_once, lose_the_node)
        )
    got = events(redis_client)
    failed = next(e for e in got if e.type == "training.failed")
    assert failed.model_id == LGBM and failed.data["status"] == "crashed", failed.data
    registered = [e for e in got if e.type == "model.registered"]
    assert failed.data["job_id"] not in {e.data["job_id"] for e in registered}
    for event in registered:
        path = Path(event.data["artifact_dir"])
        assert path.parent.parent == data_dir / "models"
        artifacts.load_version(path)
    assert svc.metrics.totals()["failed"] == 1
    assert cluster.forbidden_opens() == []


async def wait_for(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s")
        await asyncio.sleep(0.2)
