"""One training job, from launch to its end, and the records of jobs.

``JobRunner.launch`` builds the job's spec, hands it to the executor and
waits; a job that produced a version is registered and judged, one that
failed (error, crash, timeout, cancelled at shutdown) is reported. Either way
its ``training.*`` event goes to the registry's outbox and its record moves
from ``jobs`` (running) to ``recent``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from quantum_daemon.core.scheduling import TrainRequest
from quantum_daemon.domain.events import (
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_STARTED,
    make_event,
)
from quantum_daemon.lifecycle.metrics import LifecycleMetrics
from quantum_daemon.lifecycle.specs import JobSpecs
from quantum_daemon.lifecycle.views import JobRecord
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.events import OutboxFlusher
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.executor import Executor, JobFn, JobOutcome, PoolCrashLoop
from quantum_daemon.training.jobs import TrainJobResult, TrainJobSpec

log = get_logger()

RECENT_JOBS = 100
HEADLINE_METRICS = (
    "trades",
    "sharpe",
    "dsr",
    "profit_factor",
    "max_drawdown",
    "total_return",
    "mase",
)

Decide = Callable[[str, str], Awaitable[str]]
ReportRefused = Callable[[str, str, str], Awaitable[None]]


class JobRunner:
    """Launches jobs and keeps their bookkeeping. ``decide(model_id,
    version)`` judges a registered version and returns its stage;
    ``report_refused(model_id, version, reason)`` handles an active version
    whose artifacts a job found corrupt."""

    def __init__(
        self,
        executor: Executor,
        job_fn: JobFn,
        specs: JobSpecs,
        registry: Registry,
        flusher: OutboxFlusher,
        metrics: LifecycleMetrics,
        clock: Callable[[], float],
        decide: Decide,
        report_refused: ReportRefused,
    ) -> None:
        self.executor = executor
        self.job_fn = job_fn
        self.specs = specs
        self.registry = registry
        self.flusher = flusher
        self.metrics = metrics
        self.clock = clock
        self.decide = decide
        self.report_refused = report_refused
        self.jobs: dict[str, JobRecord] = {}
        self.recent: deque[JobRecord] = deque(maxlen=RECENT_JOBS)

    async def launch(self, request: TrainRequest) -> bool:
        """Run one job to its end; every failure is reported, only a crash
        loop of the workers escapes (fatal)."""
        try:
            spec = await self.specs.build(request)
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
        await self._register(spec, result)
        stage = await self.decide(result.model_id, result.version)
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
            **headline(result.metrics),
        )
        return True

    async def _register(self, spec: TrainJobSpec, result: TrainJobResult) -> None:
        """Record the new version; an active version the job could not load
        for its head-to-head is refused."""
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
        # shielded: a job cancelled at shutdown still records its event
        await asyncio.shield(asyncio.to_thread(self.registry.add_events, spec.model_id, [event]))
        self.flusher.wake()


def headline(metrics: Any) -> dict[str, Any]:
    """The metrics worth a log line."""
    return {k: metrics.get(k) for k in HEADLINE_METRICS}
