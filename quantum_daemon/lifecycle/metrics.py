"""Prometheus metrics of the continuous-learning loop, on the daemon's registry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from quantum_daemon.domain.stages import STAGES

JOB_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


class LifecycleView(Protocol):
    """What the gauges read at scrape time."""

    @property
    def jobs(self) -> Mapping[str, Any]: ...

    @property
    def scheduler(self) -> Any: ...

    @property
    def executor(self) -> Any: ...


class LifecycleMetrics:
    def __init__(self, registry: CollectorRegistry, view: LifecycleView) -> None:
        self.queued = Gauge(
            "quantum_training_jobs_queued",
            "Models waiting for a training job",
            registry=registry,
        )
        self.queued.set_function(lambda: len(view.scheduler.pending()))
        self.running = Gauge(
            "quantum_training_jobs_running", "Training jobs running now", registry=registry
        )
        self.running.set_function(lambda: len(view.jobs))
        self.done = Counter(
            "quantum_training_jobs_done",
            "Training jobs that produced a version, by family",
            ["family"],
            registry=registry,
        )
        self.failed = Counter(
            "quantum_training_jobs_failed",
            "Training jobs that failed, by family and how (error, crashed, timeout, cancelled)",
            ["family", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "quantum_training_job_seconds",
            "Wall time of training jobs (train + evaluate + store), by family",
            ["family"],
            buckets=JOB_SECONDS_BUCKETS,
            registry=registry,
        )
        self.busy = Gauge(
            "quantum_training_worker_busy_seconds",
            "Seconds the training workers spent on jobs since start",
            registry=registry,
        )
        self.busy.set_function(lambda: view.executor.busy_seconds())
        self.versions = Gauge(
            "quantum_model_versions", "Model versions by stage", ["stage"], registry=registry
        )
        self._done = 0
        self._failed = 0

    def job_done(self, family: str, seconds: float) -> None:
        self._done += 1
        self.done.labels(family).inc()
        self.seconds.labels(family).observe(seconds)

    def job_failed(self, family: str, status: str, seconds: float) -> None:
        self._failed += 1
        self.failed.labels(family, status).inc()
        self.seconds.labels(family).observe(seconds)

    def set_stages(self, models: Iterable[Mapping[str, Any]]) -> None:
        counts = dict.fromkeys(STAGES, 0)
        for model in models:
            for version in model["versions"]:
                counts[version["stage"]] = counts.get(version["stage"], 0) + 1
        for stage, n in counts.items():
            self.versions.labels(stage).set(n)

    def totals(self) -> dict[str, int]:
        return {"done": self._done, "failed": self._failed}
