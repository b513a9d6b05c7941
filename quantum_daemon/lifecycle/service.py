"""The continuous-learning loop as one daemon step: schedule, train, evaluate,
register, promote, publish (DESIGN §5, §7).

``LifecycleService`` owns the scheduler and its loop, the training executor
(the local spawn pool or Ray), the registry, the promotion gates, the event
outbox flusher and the control-stream consumer, with their metrics and JSON
routes. The daemon enters it as an async context manager (start-up is
recovery: the registry adopts what a crash left, active artifacts are
checked, every model's state is rebuilt from the registry and the store),
starts its ``loops()``, serves its ``routes()``, and has ingest call
``on_bars_stored`` after each committed batch.

Nothing here runs model code or imports a model library: jobs go to the
executor as frozen specs with the bars as arrays, file and store work runs in
threads, and the event loop only decides and awaits.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from quantum_daemon.core.promotion import HeadToHead, judge
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.lifecycle.control import Command, ControlConsumer, apply_to_registry
from quantum_daemon.lifecycle.metrics import LifecycleMetrics
from quantum_daemon.lifecycle.scheduler import (
    ModelKey,
    ModelStart,
    Scheduler,
    SchedulerLoop,
    SchedulerPolicy,
    TrainRequest,
    model_keys,
)
from quantum_daemon.lifecycle.views import JobRecord, jobs_view, models_view
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.events import (
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_STARTED,
    EventPublisher,
    OutboxFlusher,
    make_event,
)
from quantum_daemon.storage.recorded_signals import (
    SIGNAL_CONSUMERS,
    RecordedSignals,
    read_recorded_signals,
)
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.jobs import ActiveRef, TrainJobResult, TrainJobSpec, run_job
from quantum_daemon.training.pool import (
    Executor,
    JobFn,
    JobOutcome,
    PoolCrashLoop,
    PoolSettings,
    ProcessPool,
)
from quantum_daemon.web.api import json_response

log = get_logger()

LoopFactory = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
RECENT_JOBS = 100


class BarSource(Protocol):
    """What the lifecycle reads from the bar store (``store.BarStore``)."""

    def read_bars(
        self,
        symbol: str,
        tf: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        last_n: int | None = None,
    ) -> Bars: ...

    def count(self, symbol: str | None = None, tf: str | None = None) -> int: ...


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
        self.job_fn = job_fn
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
        self.scheduler = Scheduler(self._model_keys(), self._policy())
        self.loop = SchedulerLoop(
            self.scheduler,
            self._can_run,
            self._launch,
            self._has_active,
            drain_s=max(0.5, cfg.daemon.grace_s - 2.0),
        )
        self.jobs: dict[str, JobRecord] = {}
        self.recent: deque[JobRecord] = deque(maxlen=RECENT_JOBS)
        self.models: list[dict[str, Any]] = []
        self.metrics = LifecycleMetrics(metrics_registry, self)

    def _model_keys(self) -> list[ModelKey]:
        m = self.cfg.models
        return model_keys(m.families, m.symbols, m.timeframes)

    def _policy(self) -> SchedulerPolicy:
        return SchedulerPolicy(
            retrain_every_bars=self.cfg.models.retrain_every_bars,
            retrain_interval_s=self.cfg.models.retrain_interval_s,
            min_bars=self.cfg.training.history_bars,
        )

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
            n = await asyncio.to_thread(self.store.count, key.symbol, key.tf)
            self.scheduler.set_available(key.symbol, key.tf, n)
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
            since = len(self.store.read_bars(key.symbol, key.tf, start_ms=last_ts + 1))
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
        """Run one job to its end; every failure is reported, only a crash
        loop of the workers escapes (fatal)."""
        try:
            spec = await self._spec(request)
        except Exception as exc:  # a task boundary: the job cannot start, the daemon goes on
            self.executor.release(request.key.family)
            log.error("training.not_started", model_id=request.model_id, error=repr(exc))
            return False
        record = self._start_record(request, spec)
        await self._emit(spec, TRAINING_STARTED, reasons=record.reasons)
        try:
            outcome = await self.executor.run(
                self.job_fn,
                spec,
                family=spec.family,
                job_id=spec.job_id,
                timeout_s=spec.timeout_s,
            )
        except PoolCrashLoop as exc:
            await self._failed(spec, record, exc.outcome)
            raise
        except asyncio.CancelledError:
            cancelled = JobOutcome(spec.job_id, "cancelled", reason="daemon stopping")
            await asyncio.shield(self._failed(spec, record, cancelled))
            raise
        if not outcome.ok:
            await self._failed(spec, record, outcome)
            return False
        return await self._completed(spec, record, outcome)

    async def _spec(self, request: TrainRequest) -> TrainJobSpec:
        key = request.key
        bars = await asyncio.to_thread(
            self.store.read_bars, key.symbol, key.tf, last_n=self.cfg.training.history_bars
        )
        active = await asyncio.to_thread(self.registry.active_version, key.model_id)
        path = self.registry.version_path(key.model_id, active) if active else None
        signals = None
        if key.family in SIGNAL_CONSUMERS:
            signals = await self._recorded_signals(key, int(bars.ts[-1]) if len(bars) else None)
        return TrainJobSpec(
            job_id=f"{key.model_id}-{uuid.uuid4().hex[:8]}",
            family=key.family,
            bars=bars,
            data_dir=str(self.cfg.storage.data_dir),
            version_time=await asyncio.to_thread(self._version_time, key.model_id),
            evaluation=self.cfg.evaluation,
            seed=self.cfg.models.seed,
            timeout_s=self.cfg.training.job_timeout_s,
            active=ActiveRef(active, str(path)) if active and path else None,
            signals=signals,
        )

    async def _recorded_signals(self, key: ModelKey, last_ts: int | None) -> RecordedSignals:
        """The series' recorded ensemble signals up to the job's last bar
        (``last_ts``): bars stored and answered after the job read its bars
        are not its to see."""
        signals = await read_recorded_signals(self.client, self.keys, key.symbol, key.tf)
        if signals.skipped:
            log.warning("signals.unreadable", model_id=key.model_id, skipped=signals.skipped)
        return signals.until(last_ts)

    def _version_time(self, model_id: str) -> datetime:
        """Now, or one second past the model's newest version name."""
        now = datetime.fromtimestamp(self.clock(), UTC).replace(microsecond=0)
        names = artifacts.list_versions(self.cfg.storage.data_dir, model_id)
        if not names:
            return now
        newest = datetime.strptime(names[-1], artifacts.VERSION_FORMAT).replace(tzinfo=UTC)
        return max(now, newest + timedelta(seconds=1))

    def _start_record(self, request: TrainRequest, spec: TrainJobSpec) -> JobRecord:
        record = JobRecord(
            job_id=spec.job_id,
            model_id=spec.model_id,
            family=spec.family,
            reasons=sorted(request.reasons),
            version=artifacts.version_name(spec.version_time),
            started_at=self.clock(),
        )
        self.jobs[spec.job_id] = record
        return record

    async def _completed(self, spec: TrainJobSpec, record: JobRecord, outcome: JobOutcome) -> bool:
        result: TrainJobResult = outcome.result
        record.version, record.metrics = result.version, dict(result.metrics)
        await self._emit(
            spec,
            TRAINING_COMPLETED,
            version=result.version,
            seconds=round(outcome.seconds, 3),
            metrics=dict(result.metrics),
            n_bars=result.n_bars,
        )
        await asyncio.to_thread(
            self.registry.register,
            result.model_id,
            result.version,
            result.head_to_head,
            spec.job_id,
        )
        h2h = result.head_to_head
        if h2h is not None and h2h.refused:
            await self.report_refused(result.model_id, h2h.active_version, h2h.refused)
        stage = await self._decide(result.model_id, result.version)
        self._finish(record, "completed", outcome, stage=stage)
        self.metrics.job_done(spec.family, outcome.seconds)
        log.info(
            "training.completed",
            job_id=spec.job_id,
            model_id=spec.model_id,
            family=spec.family,
            version=result.version,
            seconds=round(outcome.seconds, 3),
            stage=stage,
            **_headline(result.metrics),
        )
        return True

    async def _decide(self, model_id: str, version: str) -> str:
        """Judge a trained version against the gates and the active version:
        rejected, promoted (the model's first passing version), or a
        candidate that waits in shadow for its live record (the inference
        service promotes or retires it)."""
        show = await asyncio.to_thread(self.registry.show, model_id)
        entry = next(v for v in show["versions"] if v["version"] == version)
        verdict = judge(
            entry["metrics"],
            show["active"],
            HeadToHead.from_dict(entry.get("head_to_head")),
            self.cfg.promotion,
        )
        events = await asyncio.to_thread(self.registry.apply_verdict, model_id, version, verdict)
        for event in events:
            if event.type in ("model.promoted", "model.rejected"):
                log.info(
                    event.type,
                    model_id=model_id,
                    version=event.data["version"],
                    reason=event.data.get("reason"),
                    gate=event.data.get("gate"),
                )
        if events and verdict.stage == "candidate" and not verdict.promote:
            log.info("model.in_shadow", model_id=model_id, version=version, reason=verdict.reason)
        await self._after_change(model_id)
        return verdict.stage if not verdict.promote else "active"

    async def _failed(self, spec: TrainJobSpec, record: JobRecord, outcome: JobOutcome) -> None:
        self._finish(record, "failed", outcome)
        self.metrics.job_failed(spec.family, outcome.status, outcome.seconds)
        await self._emit(
            spec,
            TRAINING_FAILED,
            status=outcome.status,
            reason=outcome.reason,
            seconds=round(outcome.seconds, 3),
        )
        log.warning(
            "training.failed",
            job_id=spec.job_id,
            model_id=spec.model_id,
            family=spec.family,
            status=outcome.status,
            reason=outcome.reason,
            seconds=round(outcome.seconds, 3),
            detail=outcome.detail[-2000:] or None,
        )

    def _finish(
        self, record: JobRecord, status: str, outcome: JobOutcome, stage: str | None = None
    ) -> None:
        record.status, record.seconds = status, round(outcome.seconds, 3)
        record.reason = outcome.reason or None
        record.stage = stage
        self.jobs.pop(record.job_id, None)
        self.recent.append(record)

    async def _emit(self, spec: TrainJobSpec, type: str, **fields: Any) -> None:
        version = fields.pop("version", artifacts.version_name(spec.version_time))
        event = make_event(
            type,
            model_id=spec.model_id,
            family=spec.family,
            symbol=spec.symbol,
            tf=spec.tf,
            version=version,
            at=datetime.now(UTC),
            transition=spec.job_id,
            job_id=spec.job_id,
            **fields,
        )
        await asyncio.shield(asyncio.to_thread(self.registry.add_events, spec.model_id, [event]))
        self.flusher.wake()

    # -- views ---------------------------------------------------------------
    async def refresh_models(self) -> None:
        """Re-read the registry (in a thread) for ``/api/models`` and metrics."""
        self.models = await asyncio.to_thread(models_view, self.registry)
        self.metrics.set_stages(self.models)

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
            return json_response({"models": self.models})

        async def jobs(_: web.Request) -> web.StreamResponse:
            return json_response(self.jobs_view())

        return [web.get("/api/models", models), web.get("/api/jobs", jobs)]


def _headline(metrics: Any) -> dict[str, Any]:
    keys = ("trades", "sharpe", "dsr", "profit_factor", "max_drawdown", "total_return", "mase")
    return {k: metrics.get(k) for k in keys}
