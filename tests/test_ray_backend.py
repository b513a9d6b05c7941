"""The Ray backend runs the same job functions on a local Ray instance: a result
comes back, an exception is an error outcome, a worker killed mid-job fails
its job, a job past its time limit is cancelled."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from quantum_daemon.training.executor import JobOutcome
from quantum_daemon.training.ray_backend import RayExecutor, RaySettings
from tests import jobs_for_tests as jobs
from tests.jobs_for_tests import Spec

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 1024 * 1024,
        runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
    )
    yield
    ray.shutdown()


def run(fn: Any, spec: Spec, timeout_s: float = 120.0, family: str = "xgb") -> JobOutcome:
    async def main() -> JobOutcome:
        async with RayExecutor(RaySettings(max_jobs=1, log_level="warning")) as executor:
            assert executor.has_capacity(family)
            return await executor.run(fn, spec, family=family, job_id="j1", timeout_s=timeout_s)

    return asyncio.run(main())


def test_a_job_runs_in_a_ray_worker_with_pinned_threads(local_ray: None) -> None:
    outcome = run(jobs.echo, Spec(5))
    assert outcome.ok, outcome
    assert outcome.result["value"] == 5
    assert outcome.result["pid"] != os.getpid()
    assert outcome.result["omp"] == "1"
    assert outcome.result["cuda"] == ""


def test_an_exception_in_a_ray_job_is_an_error_outcome(local_ray: None) -> None:
    outcome = run(jobs.fail, Spec(4))
    assert outcome.status == "error"
    assert outcome.reason == "ValueError: bad value 4"


def test_a_ray_worker_killed_mid_job_fails_its_job(local_ray: None) -> None:
    outcome = run(jobs.crash, Spec(1))
    assert outcome.status == "crashed"
    assert "died" in outcome.reason


def test_a_ray_job_past_its_time_limit_is_cancelled(local_ray: None) -> None:
    outcome = run(jobs.sleep, Spec(1, seconds=60), timeout_s=2.0)
    assert outcome.status == "timeout"
    assert run(jobs.echo, Spec(2)).ok  # the cluster goes on
