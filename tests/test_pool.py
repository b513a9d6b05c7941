"""The supervised spawn pool: jobs run in real spawn processes; a crash, a kill
or an overrun fails only its own job and the worker is replaced; a crash loop
past the restart budget is fatal."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from quantum_daemon.runtime.restarts import RestartBudget
from quantum_daemon.training.executor import JobOutcome, PoolCrashLoop
from quantum_daemon.training.pool import PoolSettings, ProcessPool, cuda_present
from tests import jobs_for_tests as jobs
from tests.jobs_for_tests import Spec


def run_with_pool(
    body: Callable[[ProcessPool], Awaitable[Any]], workers: int = 1, budget: int = 5
) -> Any:
    settings = PoolSettings(cpu_workers=workers, restart_budget=budget, log_level="warning")

    async def main() -> Any:
        async with ProcessPool(settings) as pool:
            return await body(pool)

    return asyncio.run(main())


async def submit(
    pool: ProcessPool, fn: Callable[[Spec], Any], spec: Spec, timeout_s: float = 60.0
) -> JobOutcome:
    return await pool.run(fn, spec, family="xgb", job_id=f"job-{spec.value}", timeout_s=timeout_s)


def test_a_job_runs_in_a_spawned_worker_with_pinned_threads_low_priority_and_no_gpu() -> None:
    outcome = run_with_pool(lambda pool: submit(pool, jobs.echo, Spec(7)))
    assert outcome.ok, outcome
    assert outcome.result["value"] == 7
    assert outcome.result["pid"] != os.getpid()
    assert outcome.result["omp"] == "1"
    assert outcome.result["cuda"] == ""
    assert outcome.result["nice"] == min(19, os.nice(0) + 10)  # the event loop goes first
    assert outcome.job_id == "job-7" and outcome.seconds > 0


def test_an_exception_in_a_job_is_an_error_outcome_and_the_worker_lives_on() -> None:
    async def body(pool: ProcessPool) -> tuple[JobOutcome, JobOutcome, JobOutcome]:
        first = await submit(pool, jobs.echo, Spec(1))
        failed = await submit(pool, jobs.fail, Spec(3))
        after = await submit(pool, jobs.echo, Spec(2))
        return first, failed, after

    first, failed, after = run_with_pool(body)
    assert failed.status == "error"
    assert failed.reason == "ValueError: bad value 3"
    assert "Traceback" in failed.detail
    assert first.result["pid"] == after.result["pid"]


def test_a_result_that_cannot_be_pickled_fails_its_job_only() -> None:
    async def body(pool: ProcessPool) -> tuple[JobOutcome, JobOutcome]:
        return await submit(pool, jobs.unpicklable_result, Spec(1)), await submit(
            pool, jobs.echo, Spec(2)
        )

    bad, good = run_with_pool(body)
    assert bad.status == "error" and "cannot be pickled" in bad.reason
    assert good.ok


def test_a_worker_that_kills_itself_fails_its_job_and_the_next_job_runs() -> None:
    async def body(pool: ProcessPool) -> tuple[JobOutcome, JobOutcome, int]:
        crashed = await submit(pool, jobs.crash, Spec(1))
        nxt = await submit(pool, jobs.echo, Spec(2))
        return crashed, nxt, pool.restarts

    crashed, nxt, restarts = run_with_pool(body)
    assert crashed.status == "crashed"
    assert crashed.reason == "worker killed by SIGKILL"
    assert nxt.ok and restarts == 1


def test_sigkill_from_outside_mid_job_fails_only_that_job() -> None:
    async def body(pool: ProcessPool) -> tuple[JobOutcome, JobOutcome, JobOutcome]:
        victim = asyncio.create_task(submit(pool, jobs.sleep, Spec(1, seconds=30)))
        survivor = asyncio.create_task(submit(pool, jobs.sleep, Spec(2, seconds=1.5)))
        pid = await wait_for_busy_pid(pool, "job-1")
        os.kill(pid, signal.SIGKILL)
        killed, survived = await victim, await survivor
        return killed, survived, await submit(pool, jobs.echo, Spec(3))

    killed, survived, nxt = run_with_pool(body, workers=2)
    assert killed.status == "crashed" and "SIGKILL" in killed.reason
    assert survived.ok and survived.result == 2
    assert nxt.ok


def test_a_job_past_its_time_limit_is_stopped_and_its_worker_replaced() -> None:
    async def body(pool: ProcessPool) -> tuple[JobOutcome, int, JobOutcome]:
        task = asyncio.create_task(submit(pool, jobs.sleep, Spec(1, seconds=60), timeout_s=1.0))
        pid = await wait_for_busy_pid(pool, "job-1")
        outcome = await task
        return outcome, pid, await submit(pool, jobs.echo, Spec(2))

    outcome, pid, nxt = run_with_pool(body)
    assert outcome.status == "timeout"
    assert outcome.reason == "time limit of 1s exceeded"
    assert not pid_alive(pid)
    assert nxt.ok and nxt.result["pid"] != pid


def test_a_crash_loop_past_the_restart_budget_is_fatal() -> None:
    async def body(pool: ProcessPool) -> None:
        await submit(pool, jobs.crash, Spec(1))
        await submit(pool, jobs.crash, Spec(2))

    with pytest.raises(PoolCrashLoop) as caught:
        run_with_pool(body, budget=1)
    assert caught.value.outcome.status == "crashed"


def test_cancelling_a_job_kills_its_worker() -> None:
    async def body(pool: ProcessPool) -> tuple[int, bool]:
        task = asyncio.create_task(submit(pool, jobs.sleep, Spec(1, seconds=60)))
        pid = await wait_for_busy_pid(pool, "job-1")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pid, pool.has_capacity("xgb")

    pid, capacity = run_with_pool(body)
    assert not pid_alive(pid)
    assert capacity


def test_the_restart_budget_counts_failures_within_its_window() -> None:
    budget = RestartBudget(budget=2, window_s=10.0)
    assert budget.record(0.0) and budget.record(1.0)
    assert not budget.record(2.0)
    assert budget.record(11.5)  # the failures at 0 and 1 left the window


def test_torch_families_take_the_gpu_lane_when_there_is_one() -> None:
    pool = ProcessPool(PoolSettings(cpu_workers=2, gpu_worker=True))
    assert pool.lane_for("nhits").name == "gpu"
    assert pool.lane_for("patchtst").name == "gpu"
    assert pool.lane_for("xgb").name == "cpu"
    assert ProcessPool(PoolSettings(cpu_workers=1)).lane_for("nhits").name == "cpu"


async def wait_for_busy_pid(pool: ProcessPool, job_id: str) -> int:
    for _ in range(400):
        for lane in pool.lanes.values():
            if job_id in lane.busy:
                await asyncio.sleep(0.3)  # let the worker receive the job
                pid = lane.busy[job_id][0].pid
                assert pid is not None
                return pid
        await asyncio.sleep(0.025)
    raise AssertionError(f"{job_id} never started")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_reserved_worker_is_not_offered_twice() -> None:
    async def body(pool: ProcessPool) -> tuple[bool, bool, bool, JobOutcome]:
        first = pool.reserve("xgb")
        second = pool.reserve("xgb")
        pool.release("xgb")
        again = pool.reserve("xgb")
        return first, second, again, await submit(pool, jobs.echo, Spec(1))

    first, second, again, outcome = run_with_pool(body)
    assert (first, second, again) == (True, False, True)
    assert outcome.ok


@pytest.mark.skipif(not cuda_present(), reason="needs an NVIDIA GPU")
def test_the_gpu_worker_takes_torch_families_and_only_it_sees_the_gpu() -> None:
    async def body(pool: ProcessPool) -> tuple[JobOutcome, JobOutcome]:
        gpu = await pool.run(jobs.cuda_probe, Spec(1), family="nhits", job_id="g", timeout_s=120)
        cpu = await pool.run(jobs.cuda_probe, Spec(2), family="xgb", job_id="c", timeout_s=120)
        return gpu, cpu

    settings = PoolSettings(cpu_workers=1, gpu_worker=True, log_level="warning")

    async def main() -> tuple[JobOutcome, JobOutcome]:
        async with ProcessPool(settings) as pool:
            assert set(pool.lanes) == {"cpu", "gpu"}
            return await body(pool)

    gpu, cpu = asyncio.run(main())
    assert gpu.ok and gpu.worker.startswith("gpu-"), gpu
    assert gpu.result["available"] and gpu.result["devices"] >= 1
    assert cpu.ok and cpu.worker.startswith("cpu-")
    assert cpu.result["cuda_visible"] == "" and not cpu.result["available"]
