"""The supervised local executor: spawn worker processes, one job each at a time.

Each worker is a ``spawn`` process of its own with a pipe to the daemon (not
a shared ``ProcessPoolExecutor``, where one dead worker breaks every running
job): a worker that crashes or is killed fails only its own job, with the
reason (``killed by SIGKILL``), and is replaced by a fresh process. A job
past its time limit has its worker killed and replaced. Replacements after
failures are counted: more than ``restart_budget`` within
``restart_window_s`` is a crash loop, raised as ``PoolCrashLoop`` (fatal:
the daemon exits non-zero and systemd restarts it). A replacement after a
failure waits ``RestartBudget.delay()`` (1 s, doubling with each recent
failure), so workers that die at once do not spend the budget in seconds. Workers are never
recycled by ``max_tasks_per_child`` (gh-115634).

Workers form lanes: ``cpu`` (``[training] workers`` processes) and, when
CUDA is present and ``gpu = "auto"``, ``gpu``: one worker that takes the
torch families. CUDA is detected without importing torch. The daemon waits
for a job in a thread of the pool's own (blocked on the pipe, holding no
GIL); the event loop only awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

from quantum_daemon.domain.config import Config
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.restarts import RestartBudget
from quantum_daemon.training.executor import JobFn, JobOutcome, PoolCrashLoop
from quantum_daemon.training.jobs import TORCH_FAMILIES
from quantum_daemon.training.worker import Reply, TrainingWorkerSettings, worker_main

log = get_logger()


@dataclass(frozen=True)
class PoolSettings:
    cpu_workers: int = 2
    gpu_worker: bool = False
    threads: int = 1
    seed: int = 42
    log_level: str = "info"
    log_format: str = "json"
    restart_budget: int = 5
    restart_window_s: float = 300.0
    stop_grace_s: float = 3.0

    @classmethod
    def from_config(cls, cfg: Config, gpu_present: bool | None = None) -> PoolSettings:
        if gpu_present is None:
            gpu_present = cfg.training.gpu == "auto" and cuda_present()
        return cls(
            cpu_workers=cfg.training.workers,
            gpu_worker=cfg.training.gpu == "auto" and gpu_present,
            threads=cfg.training.worker_threads,
            seed=cfg.models.seed,
            log_level=cfg.logging.level,
            log_format="json" if cfg.logging.format == "auto" else cfg.logging.format,
            restart_budget=cfg.training.restart_budget,
            restart_window_s=cfg.training.restart_window_s,
        )


def cuda_present() -> bool:
    """Whether an NVIDIA GPU is usable here, without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        probe = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0 and "GPU" in probe.stdout


class WorkerProcess:
    """One spawn process and the daemon's end of its pipe."""

    def __init__(self, ctx: SpawnContext, settings: TrainingWorkerSettings) -> None:
        self.settings = settings
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc: SpawnProcess = ctx.Process(
            target=worker_main, args=(child, settings), name=settings.name, daemon=True
        )
        self.proc.start()
        child.close()  # only the child holds its end now: its death is EOF here

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def call(self, fn: JobFn, spec: Any) -> Reply:
        """Blocking: send the job, wait for the reply. Raises EOFError or
        OSError when the process dies."""
        self.conn.send((fn, spec))
        reply: Reply = self.conn.recv()
        return reply

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()

    def stop(self, grace_s: float) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.proc.join(timeout=grace_s)
        self.kill()

    def death_reason(self) -> str:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code is None:
            return "worker stopped answering"
        if code < 0:
            return f"worker killed by {signal.Signals(-code).name}"
        return f"worker exited with code {code}"


@dataclass
class Lane:
    name: str
    size: int
    use_gpu: bool
    idle: list[WorkerProcess] = field(default_factory=list)
    busy: dict[str, tuple[WorkerProcess, float]] = field(default_factory=dict)
    reserved: int = 0
    started: int = 0
    busy_s: float = 0.0

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "workers": self.size,
            "idle": len(self.idle),
            "reserved": self.reserved,
            "busy": [
                {"job_id": job, "pid": w.pid, "worker": w.name, "running_s": round(now - t, 3)}
                for job, (w, t) in self.busy.items()
            ],
            "busy_seconds": round(self.busy_s, 3),
        }


class ProcessPool:
    """The local executor (``[training] backend = "local"``)."""

    kind = "local"

    def __init__(self, settings: PoolSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.budget = RestartBudget(settings.restart_budget, settings.restart_window_s)
        self.ctx = multiprocessing.get_context("spawn")
        self.lanes = {"cpu": Lane("cpu", settings.cpu_workers, use_gpu=False)}
        if settings.gpu_worker:
            self.lanes["gpu"] = Lane("gpu", 1, use_gpu=True)
        self.restarts = 0
        self._io = ThreadPoolExecutor(
            max_workers=sum(lane.size for lane in self.lanes.values()) + 2,
            thread_name_prefix="training-io",
        )
        self._closing = False

    async def __aenter__(self) -> ProcessPool:
        for lane in self.lanes.values():
            for _ in range(lane.size):
                lane.idle.append(await self._spawn(lane))
        log.info(
            "training.pool_started",
            lanes={name: lane.size for name, lane in self.lanes.items()},
            threads=self.settings.threads,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        workers = [w for lane in self.lanes.values() for w in lane.idle]
        workers += [w for lane in self.lanes.values() for w, _ in lane.busy.values()]
        loop = asyncio.get_running_loop()
        grace = self.settings.stop_grace_s
        await asyncio.gather(*(loop.run_in_executor(self._io, w.stop, grace) for w in workers))
        self._io.shutdown(wait=True)

    # -- scheduling --------------------------------------------------------
    def lane_for(self, family: str) -> Lane:
        if family in TORCH_FAMILIES and "gpu" in self.lanes:
            return self.lanes["gpu"]
        return self.lanes["cpu"]

    def has_capacity(self, family: str) -> bool:
        lane = self.lane_for(family)
        return not self._closing and len(lane.idle) > lane.reserved

    def reserve(self, family: str) -> bool:
        if not self.has_capacity(family):
            return False
        self.lane_for(family).reserved += 1
        return True

    def release(self, family: str) -> None:
        lane = self.lane_for(family)
        lane.reserved = max(0, lane.reserved - 1)

    def busy_seconds(self) -> float:
        now = self.clock()
        running = sum(now - t for lane in self.lanes.values() for _, t in lane.busy.values())
        return sum(lane.busy_s for lane in self.lanes.values()) + running

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "backend": self.kind,
            "lanes": {name: lane.snapshot(now) for name, lane in self.lanes.items()},
            "restarts": self.restarts,
        }

    # -- running -----------------------------------------------------------
    async def run(
        self, fn: JobFn, spec: Any, *, family: str, job_id: str, timeout_s: float
    ) -> JobOutcome:
        """Run ``fn(spec)`` in a worker of the family's lane (one must be idle:
        reserve one first, or check ``has_capacity``). Failures are outcomes;
        only a crash loop raises."""
        lane = self.lane_for(family)
        lane.reserved = max(0, lane.reserved - 1)
        if not lane.idle or self._closing:
            raise RuntimeError(f"no idle {lane.name} worker for job {job_id}")
        worker = lane.idle.pop()
        started = self.clock()
        lane.busy[job_id] = (worker, started)
        call = asyncio.get_running_loop().run_in_executor(self._io, worker.call, fn, spec)
        outcome = JobOutcome(job_id, "cancelled", reason="daemon stopping", worker=worker.name)
        try:
            done, _ = await asyncio.wait({call}, timeout=timeout_s)
            outcome = await self._settle(lane, worker, call, bool(done), timeout_s)
        except asyncio.CancelledError:
            await self._replace(lane, worker, call)
            raise
        finally:
            lane.busy.pop(job_id, None)
            lane.busy_s += self.clock() - started
        return replace(outcome, job_id=job_id, seconds=self.clock() - started)

    async def _settle(
        self,
        lane: Lane,
        worker: WorkerProcess,
        call: asyncio.Future[Reply],
        finished: bool,
        timeout_s: float,
    ) -> JobOutcome:
        error = call.exception() if finished else None
        if finished and error is None:
            lane.idle.append(worker)
            return _outcome_of(call.result(), worker.name)
        if finished and not isinstance(error, EOFError | OSError):
            # The spec could not be sent (nothing was written): the worker is fine.
            lane.idle.append(worker)
            return JobOutcome("", "error", reason=f"{type(error).__name__}: {error}")
        if finished:
            reason = await self._in_thread(worker.death_reason)
            outcome = JobOutcome("", "crashed", reason=reason, worker=worker.name)
        else:
            outcome = JobOutcome(
                "", "timeout", reason=f"time limit of {timeout_s:g}s exceeded", worker=worker.name
            )
        await self._retire(worker, call)
        self._count_failure(outcome)
        await self._respawn(lane, self.budget.delay())
        return outcome

    def _count_failure(self, outcome: JobOutcome) -> None:
        log.warning(
            "training.worker_replaced",
            worker=outcome.worker,
            status=outcome.status,
            reason=outcome.reason,
        )
        if not self.budget.record(self.clock()):
            raise PoolCrashLoop(outcome, len(self.budget.times), self.budget.window_s)

    async def _replace(self, lane: Lane, worker: WorkerProcess, call: asyncio.Future[Any]) -> None:
        """Kill ``worker`` (its pending call then ends) and start a fresh one."""
        await self._retire(worker, call)
        await self._respawn(lane, 0.0)

    async def _retire(self, worker: WorkerProcess, call: asyncio.Future[Any]) -> None:
        await asyncio.shield(self._in_thread(worker.kill))
        with contextlib.suppress(BaseException):
            await asyncio.shield(call)

    async def _respawn(self, lane: Lane, delay_s: float) -> None:
        if delay_s > 0 and not self._closing:
            log.info("training.worker_restart_delayed", lane=lane.name, delay_s=delay_s)
            await asyncio.sleep(delay_s)
        if not self._closing:
            self.restarts += 1
            lane.idle.append(await asyncio.shield(self._spawn(lane)))

    async def _spawn(self, lane: Lane) -> WorkerProcess:
        lane.started += 1
        settings = TrainingWorkerSettings(
            name=f"{lane.name}-{lane.started}",
            threads=self.settings.threads,
            seed=self.settings.seed,
            log_level=self.settings.log_level,
            log_format=self.settings.log_format,
            use_gpu=lane.use_gpu,
        )
        return await self._in_thread(lambda: WorkerProcess(self.ctx, settings))

    async def _in_thread(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn)


def _outcome_of(reply: Reply, worker: str) -> JobOutcome:
    if reply[0] == "ok":
        return JobOutcome("", "ok", result=reply[1], worker=worker)
    detail = reply[2] if len(reply) > 2 else ""
    return JobOutcome("", "error", reason=str(reply[1]), worker=worker, detail=str(detail))
