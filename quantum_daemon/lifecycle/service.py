"""The continuous-learning loop as one daemon step: schedule, train, evaluate,
register, promote, publish (DESIGN §5, §7).

``LifecycleService`` owns the scheduler and its loop, the training executor
(the local spawn pool or Ray), the registry, the promotion gates, the event
outbox flusher and the control-stream consumer, with their metrics and JSON
routes. The daemon enters it as an async context manager (start-up is
recovery: the registry adopts what a crash left, active artifacts are
checked, every model's state is rebuilt from the registry and the store),
starts its ``loops()``, serves its ``routes()``, and has ingest call
``on_bars_stored`` after each committed batch. One job's run is
``lifecycle.jobs``, its spec ``lifecycle.specs``, the decision on its
version ``lifecycle.decisions``.

Nothing here runs model code or imports a model library: jobs go to the
executor as frozen specs with the bars as arrays, file and store work runs in
threads, and the event loop only decides and awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from quantum_daemon.core.scheduling import (
    ModelStart,
    Scheduler,
    SchedulerPolicy,
    TrainRequest,
    Trigger,
)
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.keys import Keys
from quantum_daemon.lifecycle.control import Command, ControlConsumer, apply_to_registry
from quantum_daemon.lifecycle.decisions import decide_version
from quantum_daemon.lifecycle.jobs import JobRunner
from quantum_daemon.lifecycle.metrics import LifecycleMetrics
from quantum_daemon.lifecycle.scheduler import SchedulerLoop
from quantum_daemon.lifecycle.specs import BarSource, JobSpecs
from quantum_daemon.lifecycle.views import JobRecord, jobs_view, models_view, with_live_intervals
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.events import EventPublisher, OutboxFlusher
from quantum_daemon.storage.prediction_records import RECORDS_FILE, read_interval_scores
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.executor import Executor, JobFn
from quantum_daemon.training.jobs import run_job
from quantum_daemon.training.pool import PoolSettings, ProcessPool
from quantum_daemon.web.responses import json_response

log = get_logger()

LoopFactory = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def make_executor(cfg: Config) -> Executor:
    """The training backend of ``[training] backend``."""
    if cfg.training.backend == "ray":
        from quantum_daemon.training.ray_backend import RayExecutor

        return RayExecutor.from_config(cfg)
    return ProcessPool(PoolSettings.from_config(cfg))


class LifecycleService:
    def __init__(
        self,
        cfg: Config,
        client: aioredis.Redis,
        store: BarSource,
        metrics_registry: CollectorRegistry,
        executor: Executor | None = None,
        job_fn: JobFn = run_job,
        clock: Callable[[], float] = time.time,
        consumer: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.executor = executor or make_executor(cfg)
        self.registry = Registry(cfg.storage.data_dir)
        self.keys = Keys(cfg.redis.prefix)
        self.client = client  # also read for rl_sizer's recorded signals
        publisher = EventPublisher(client, self.keys)
        self.flusher = OutboxFlusher(self.registry, publisher)
        self.control = ControlConsumer(
            client,
            self.keys,
            cfg.ingest.group,
            self.handle_command,
            publisher,
            consumer=consumer,
            reconnect_max_s=cfg.redis.reconnect_max_s,
        )
        self.scheduler = Scheduler(
            self._model_keys(), self._policy(), dict(cfg.models.multi.models)
        )
        self.loop = SchedulerLoop(
            self.scheduler,
            self._can_run,
            self._launch,
            self._has_active,
            drain_s=max(0.5, cfg.daemon.grace_s - 2.0),
        )
        self.models: list[dict[str, Any]] = []
        self.metrics = LifecycleMetrics(metrics_registry, self)
        self.runner = self._job_runner(job_fn)

    def _model_keys(self) -> list[ModelKey]:
        return self.cfg.models.keys()

    def _policy(self) -> SchedulerPolicy:
        return SchedulerPolicy(
            retrain_every_bars=self.cfg.models.retrain_every_bars,
            retrain_interval_s=self.cfg.models.retrain_interval_s,
            min_bars=self.cfg.training.history_bars,
        )

    def _job_runner(self, job_fn: JobFn) -> JobRunner:
        specs = JobSpecs(self.cfg, self.store, self.registry, self.client, self.keys, self.clock)
        return JobRunner(
            self.executor,
            job_fn,
            specs,
            self.registry,
            self.flusher,
            self.metrics,
            self.clock,
            decide=self._decide,
            report_refused=self.report_refused,
        )

    @property
    def jobs(self) -> dict[str, JobRecord]:
        """Running jobs by job id."""
        return self.runner.jobs

    @property
    def recent(self) -> deque[JobRecord]:
        """The last jobs that ended, oldest first."""
        return self.runner.recent

    # -- start and stop ------------------------------------------------------
    async def __aenter__(self) -> LifecycleService:
        waiting = await asyncio.to_thread(self.registry.recover)
        await self._check_active_artifacts()
        for model_id, version in waiting:
            await self._decide(model_id, version)
        await self._start_scheduler()
        await self.executor.__aenter__()
        await self.refresh_models()
        log.info(
            "lifecycle.started",
            models=len(self.scheduler.keys()),
            queued=[r.model_id for r in self.scheduler.pending()],
            backend=self.executor.kind,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.executor.__aexit__(*exc)

    def loops(self) -> dict[str, LoopFactory]:
        """The service's loops, for the daemon's task group. The event
        flusher outlives the scheduler's drain, so that the events of jobs
        cancelled at shutdown go out too."""
        drained = asyncio.Event()

        async def scheduler(stop: asyncio.Event) -> None:
            try:
                await self.loop.run(stop)
            finally:
                drained.set()

        async def events(stop: asyncio.Event) -> None:
            await self.flusher.run(drained)

        return {
            "lifecycle-scheduler": scheduler,
            "lifecycle-events": events,
            "lifecycle-control": self.control.run,
        }

    async def _check_active_artifacts(self) -> None:
        """An active version whose artifacts fail their sha256 check is
        refused and retired: its model then trains first."""
        for model_id in await asyncio.to_thread(self.registry.model_ids):
            active = await asyncio.to_thread(self.registry.active_version, model_id)
            if active is None:
                continue
            try:
                await asyncio.to_thread(self.registry.verify, model_id, active)
            except artifacts.ArtifactCorrupt as exc:
                await self.report_refused(model_id, active, str(exc))

    async def _start_scheduler(self) -> None:
        known = await asyncio.to_thread(self._model_starts)
        for key in self.scheduler.keys():
            for symbol, tf in self.scheduler.series_of(key.model_id):
                n = await asyncio.to_thread(self.store.count, symbol, tf)
                self.scheduler.set_available(symbol, tf, n)
        self.scheduler.start(self.clock(), known)

    def _model_starts(self) -> dict[str, ModelStart]:
        """Per model: has it an active version, when did it last train, and
        how many bars were stored after the data its newest version saw."""
        starts = {}
        for key in self.scheduler.keys():
            newest = self.registry.newest(key.model_id)
            if newest is None:
                starts[key.model_id] = ModelStart()
                continue
            created, last_ts = newest
            since = max(
                len(self.store.read_bars(symbol, tf, start_ms=last_ts + 1))
                for symbol, tf in self.scheduler.series_of(key.model_id)
            )
            active = self.registry.active_version(key.model_id) is not None
            starts[key.model_id] = ModelStart(active, created, since)
        return starts

    # -- inputs --------------------------------------------------------------
    def on_bars_stored(self, symbol: str, tf: str, count: int, last_ts: int | None = None) -> None:
        """Ingest's hook, on the event loop, after a batch was committed."""
        if count > 0:
            self.loop.bars_stored(symbol, tf, count)

    async def handle_command(self, command: Command) -> list[str]:
        """A control command (stream or API): train, promote, retire, rollback."""
        if command.name == "train":
            self.loop.request(command.model_id)
            return ["queued"]
        events = await asyncio.to_thread(apply_to_registry, self.registry, command)
        await self._after_change(command.model_id)
        return [e.type for e in events]

    def request_retrain(self, model_id: str, trigger: str) -> None:
        """Inference saw the model's loss drift: queue a training."""
        self.loop.request(model_id, Trigger(trigger))

    async def report_refused(self, model_id: str, version: str, reason: str) -> None:
        """An artifact failed its integrity check at load (here or in a worker)."""
        log.error("model.load_refused", model_id=model_id, version=version, reason=reason)
        await asyncio.to_thread(self.registry.refuse, model_id, version, reason)
        await self._after_change(model_id)

    async def _after_change(self, model_id: str) -> None:
        active = await asyncio.to_thread(self.registry.active_version, model_id)
        self.scheduler.set_active(model_id, active is not None)
        self.flusher.wake()
        await self.refresh_models()

    # -- one job -------------------------------------------------------------
    def _can_run(self, key: ModelKey) -> bool:
        return self.executor.reserve(key.family)

    def _has_active(self, model_id: str) -> bool:
        return any(m["model_id"] == model_id and m["active"] for m in self.models)

    async def _launch(self, request: TrainRequest) -> bool:
        return await self.runner.launch(request)

    async def _decide(self, model_id: str, version: str) -> str:
        """Judge a trained version (``lifecycle.decisions``) and take in the
        change; returns its stage."""
        stage = await decide_version(self.registry, self.cfg.promotion, model_id, version)
        await self._after_change(model_id)
        return stage

    # -- views ---------------------------------------------------------------
    async def refresh_models(self) -> None:
        """Re-read the registry (in a thread) for ``/api/models`` and metrics."""
        self.models = await asyncio.to_thread(models_view, self.registry)
        self.metrics.set_stages(self.models)
        for model in self.models:  # a transition elsewhere may have left it without one
            self.scheduler.set_active(model["model_id"], model["active"] is not None)

    def jobs_view(self) -> dict[str, Any]:
        return jobs_view(
            self.executor.snapshot(),
            self.scheduler,
            self.jobs.values(),
            self.recent,
            self.metrics.totals(),
            self.clock(),
        )

    def status(self) -> dict[str, Any]:
        totals = self.metrics.totals()
        active = sum(1 for m in self.models if m["active"])
        summary = (
            f"{len(self.jobs)} running, {len(self.scheduler.pending())} queued, "
            f"{totals['done']} done, {totals['failed']} failed; "
            f"{active}/{len(self.scheduler.keys())} models active"
        )
        return {
            "summary": summary,
            "jobs": totals,
            "active": {m["model_id"]: m["active"] for m in self.models},
            "events_backlog": self.flusher.backlog,
        }

    def routes(self) -> list[web.RouteDef]:
        async def models(_: web.Request) -> web.StreamResponse:
            # live coverage moves with every scored bar: read at request time
            records = Path(self.cfg.storage.data_dir) / RECORDS_FILE
            scores = await asyncio.to_thread(read_interval_scores, records)
            return json_response({"models": with_live_intervals(self.models, scores)})

        async def jobs(_: web.Request) -> web.StreamResponse:
            return json_response(self.jobs_view())

        return [web.get("/api/models", models), web.get("/api/jobs", jobs)]
