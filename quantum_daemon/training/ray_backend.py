"""The Ray executor (``[training] backend = "ray"``): the same job function,
on a Ray cluster when one machine is not enough.

``ray`` is an optional extra (``pip install 'quantum-daemon[ray]'``),
imported only when this backend starts. ``ray_address`` empty starts a local
Ray instance with ``workers`` CPUs; otherwise the daemon joins the cluster
there. Each job is one Ray task running ``run_in_ray_worker(fn, spec,
settings)``, which sets the worker process up once (logging, seed; the
thread variables come through the task's ``runtime_env``) and calls
``fn(spec)``.

A training job (``TrainJobSpec``) travels by value (``training.by_value``):
the worker gets the bars, params, seed and the active version's files in
the task, runs in a temporary folder of its own disk, and sends the new
version folder back as checksummed bytes, which the daemon verifies and
commits atomically under its data dir: no worker needs the daemon's disk.

Torch families ask for ``[training.ray] num_gpus`` (per family:
``family_num_gpus``) when ``gpu = "auto"`` and the cluster has GPUs. At most
``workers`` jobs run at once; a job past its time limit is cancelled with
``force=True`` (Ray kills its worker process); a worker or node that dies
fails its job (``crashed``), never retried; failures count against the same
restart budget as the local pool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantum_daemon.domain.config import Config
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.restarts import RestartBudget
from quantum_daemon.training.by_value import (
    ShippedVersion,
    pack_job,
    receive_version,
    run_by_value,
)
from quantum_daemon.training.executor import JobFn, JobOutcome, PoolCrashLoop
from quantum_daemon.training.jobs import TORCH_FAMILIES, TrainJobSpec
from quantum_daemon.training.worker import (
    THREAD_ENV_VARS,
    TrainingWorkerSettings,
    initialize_worker,
)

log = get_logger()

_initialized_in_this_process = False


def run_in_ray_worker(fn: JobFn, spec: Any, settings: TrainingWorkerSettings) -> Any:
    """The Ray task: per-process set-up once, then the job."""
    global _initialized_in_this_process
    if not _initialized_in_this_process:
        initialize_worker(settings)
        _initialized_in_this_process = True
    return fn(spec)


@dataclass(frozen=True)
class RaySettings:
    address: str = ""
    max_jobs: int = 2
    gpu: bool = True  # ask for GPUs for torch families when the cluster has some
    threads: int = 1
    seed: int = 42
    log_level: str = "info"
    log_format: str = "json"
    restart_budget: int = 5
    restart_window_s: float = 300.0
    object_store_mb: int = 256  # local instance only
    num_gpus: float = 1.0  # what a torch family's job asks for
    family_num_gpus: Mapping[str, float] = field(default_factory=dict)  # wins, any family
    max_version_mb: float = 64.0  # the files that travel each way
    data_dir: str = ""  # where shipped versions are committed (the daemon's data dir)

    @classmethod
    def from_config(cls, cfg: Config) -> RaySettings:
        t = cfg.training
        return cls(
            num_gpus=t.ray.num_gpus,
            family_num_gpus=dict(t.ray.family_num_gpus.by_family),
            max_version_mb=t.ray.max_version_mb,
            data_dir=str(cfg.storage.data_dir),
            address=t.ray_address,
            max_jobs=t.workers,
            gpu=t.gpu == "auto",
            threads=t.worker_threads,
            seed=cfg.models.seed,
            log_level=cfg.logging.level,
            log_format="json" if cfg.logging.format == "auto" else cfg.logging.format,
            restart_budget=t.restart_budget,
            restart_window_s=t.restart_window_s,
        )

    def gpus_for(self, family: str) -> float:
        """GPUs a job of ``family`` asks for when the cluster has some."""
        chosen = self.family_num_gpus.get(family)
        if chosen is not None:
            return chosen
        return self.num_gpus if family in TORCH_FAMILIES else 0.0

    @property
    def max_bytes(self) -> int:
        return int(self.max_version_mb * 2**20)


class RayExecutor:
    kind = "ray"

    def __init__(self, settings: RaySettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.budget = RestartBudget(settings.restart_budget, settings.restart_window_s)
        self.running: dict[str, float] = {}
        self.reserved = 0
        self.failures = 0
        self._busy_s = 0.0
        self._owns_ray = False
        self._gpus = 0.0
        self._task: Any = None

    @classmethod
    def from_config(cls, cfg: Config) -> RayExecutor:
        return cls(RaySettings.from_config(cfg))

    async def __aenter__(self) -> RayExecutor:
        await asyncio.to_thread(self._connect)
        log.info(
            "training.ray_connected",
            address=self.settings.address or "local",
            gpus=self._gpus,
            max_jobs=self.settings.max_jobs,
        )
        return self

    def _connect(self) -> None:
        import ray

        if not ray.is_initialized():
            self._init(ray)
            self._owns_ray = True
        self._gpus = float(ray.cluster_resources().get("GPU", 0.0))
        self._task = ray.remote(max_retries=0)(run_in_ray_worker)

    def _init(self, ray: Any) -> None:
        if self.settings.address:
            ray.init(address=self.settings.address, log_to_driver=False)
            return
        ray.init(
            num_cpus=self.settings.max_jobs,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=self.settings.object_store_mb * 1024 * 1024,
        )

    async def __aexit__(self, *exc: object) -> None:
        if self._owns_ray:
            import ray

            await asyncio.to_thread(ray.shutdown)

    def has_capacity(self, family: str) -> bool:
        return len(self.running) + self.reserved < self.settings.max_jobs

    def reserve(self, family: str) -> bool:
        if not self.has_capacity(family):
            return False
        self.reserved += 1
        return True

    def release(self, family: str) -> None:
        self.reserved = max(0, self.reserved - 1)

    def busy_seconds(self) -> float:
        now = self.clock()
        return self._busy_s + sum(now - t for t in self.running.values())

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "backend": self.kind,
            "address": self.settings.address or "local",
            "max_jobs": self.settings.max_jobs,
            "gpus": self._gpus,
            "running": {job: round(now - t, 3) for job, t in self.running.items()},
            "failures": self.failures,
            "busy_seconds": round(self.busy_seconds(), 3),
        }

    def _options(self, family: str, job_id: str) -> dict[str, Any]:
        threads = str(self.settings.threads)
        env = {var: threads for var in THREAD_ENV_VARS}
        options: dict[str, Any] = {"num_cpus": 1, "name": f"train:{job_id}"}
        gpus = self.settings.gpus_for(family)
        if gpus > 0 and self.settings.gpu and self._gpus > 0:
            options["num_gpus"] = gpus
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
        options["runtime_env"] = {"env_vars": env}
        return options

    def _worker_settings(self, options: dict[str, Any]) -> TrainingWorkerSettings:
        return TrainingWorkerSettings(
            name="ray",
            threads=self.settings.threads,
            seed=self.settings.seed,
            log_level=self.settings.log_level,
            log_format=self.settings.log_format,
            use_gpu="num_gpus" in options,
        )

    async def run(
        self, fn: JobFn, spec: Any, *, family: str, job_id: str, timeout_s: float
    ) -> JobOutcome:
        import ray

        self.release(family)
        started = self.clock()
        self.running[job_id] = started
        try:
            outcome = await self._run(ray, fn, spec, family, job_id, timeout_s)
        finally:
            self.running.pop(job_id, None)
            self._busy_s += self.clock() - started
        if outcome.status in ("crashed", "timeout"):
            self._count_failure(outcome)
        return JobOutcome(
            job_id,
            outcome.status,
            outcome.result,
            outcome.reason,
            self.clock() - started,
            "ray",
            outcome.detail,
        )

    async def _run(
        self, ray: Any, fn: JobFn, spec: Any, family: str, job_id: str, timeout_s: float
    ) -> JobOutcome:
        """A training job by value (packed here, its version committed here);
        any other job function as it is."""
        by_value = isinstance(spec, TrainJobSpec)
        if by_value and not self.settings.data_dir:
            return JobOutcome(job_id, "error", reason="no data dir to commit the version to")
        if by_value:
            try:
                packed = await asyncio.to_thread(pack_job, fn, spec, self.settings.max_bytes)
            except Exception as exc:  # a job that cannot be sent fails alone
                return JobOutcome(job_id, "error", reason=f"not sent: {type(exc).__name__}: {exc}")
            fn, spec = run_by_value, packed
        options = self._options(family, job_id)
        ref = self._task.options(**options).remote(fn, spec, self._worker_settings(options))
        try:
            outcome = await self._await(ray, ref, job_id, timeout_s)
        except asyncio.CancelledError:
            ray.cancel(ref, force=True)
            raise
        if by_value and outcome.ok:
            return await self._receive(outcome)
        return outcome

    async def _receive(self, outcome: JobOutcome) -> JobOutcome:
        """Commit the shipped version under the daemon's data dir."""
        shipped: ShippedVersion = outcome.result
        try:
            result = await asyncio.to_thread(
                receive_version, Path(self.settings.data_dir), shipped, self.settings.max_bytes
            )
        except Exception as exc:  # a refused version fails its job; nothing was registered
            return JobOutcome(outcome.job_id, "error", reason=f"{type(exc).__name__}: {exc}")
        return JobOutcome(outcome.job_id, "ok", result=result)

    async def _await(self, ray: Any, ref: Any, job_id: str, timeout_s: float) -> JobOutcome:
        future = asyncio.wrap_future(ref.future())
        try:
            result = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            ray.cancel(ref, force=True)
            return JobOutcome(job_id, "timeout", reason=f"time limit of {timeout_s:g}s exceeded")
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            return JobOutcome(
                job_id, "error", reason=f"{type(cause).__name__}: {cause}", detail=str(exc)
            )
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as exc:
            return JobOutcome(job_id, "crashed", reason=f"ray worker died: {type(exc).__name__}")
        return JobOutcome(job_id, "ok", result=result)

    def _count_failure(self, outcome: JobOutcome) -> None:
        self.failures += 1
        log.warning("training.ray_job_lost", status=outcome.status, reason=outcome.reason)
        if not self.budget.record(self.clock()):
            raise PoolCrashLoop(outcome, len(self.budget.times), self.budget.window_s)
