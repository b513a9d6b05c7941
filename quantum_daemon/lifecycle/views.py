"""What ``/api/models``, ``/api/jobs`` and the status section show of the
continuous-learning loop: plain data built from the service's state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from quantum_daemon.core.scheduling import Scheduler, TrainRequest
from quantum_daemon.domain.stages import Stage
from quantum_daemon.storage.prediction_records import IntervalScore, live_intervals_json
from quantum_daemon.storage.registry.registry import Registry


@dataclass
class JobRecord:
    """One job as ``/api/jobs`` shows it."""

    job_id: str
    model_id: str
    family: str
    reasons: list[str]
    version: str
    status: str = "running"
    started_at: float = 0.0
    seconds: float | None = None
    reason: str | None = None
    stage: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def models_view(registry: Registry) -> list[dict[str, Any]]:
    """Every model with its active version and all its versions (reads files:
    call it in a thread)."""
    by_model: dict[str, dict[str, Any]] = {}
    for info in registry.versions():
        model = by_model.get(info.model_id)
        if model is None:  # once per model: the ledger reads its state.json
            model = by_model[info.model_id] = {
                "model_id": info.model_id,
                "family": info.family,
                "symbol": info.symbol,
                "tf": info.tf,
                "active": None,
                "trials": registry.ledger(info.model_id),
                "versions": [],
            }
        model["versions"].append(info.to_json())
        if info.stage == Stage.ACTIVE:
            model["active"] = info.version
    return list(by_model.values())


def with_live_intervals(
    models: Iterable[Mapping[str, Any]], scores: Mapping[tuple[str, str], IntervalScore]
) -> list[dict[str, Any]]:
    """``models_view``'s models, each version with its ``live_intervals``
    (``prediction_records.interval_scores``), as copies."""
    return [{**model, "versions": _versions_with(model, scores)} for model in models]


def _versions_with(
    model: Mapping[str, Any], scores: Mapping[tuple[str, str], IntervalScore]
) -> list[dict[str, Any]]:
    mid = model["model_id"]
    return [
        {**v, "live_intervals": live_intervals_json(scores, mid, v["version"])}
        for v in model["versions"]
    ]


def jobs_view(
    backend: Mapping[str, Any],
    scheduler: Scheduler,
    running: Iterable[JobRecord],
    recent: Iterable[JobRecord],
    totals: Mapping[str, int],
    now: float,
) -> dict[str, Any]:
    return {
        "backend": dict(backend),
        "queued": [queued_view(scheduler, r, now) for r in scheduler.pending()],
        "running": [asdict(r) for r in running],
        "recent": [asdict(r) for r in reversed(list(recent))],
        "totals": dict(totals),
    }


def queued_view(scheduler: Scheduler, request: TrainRequest, now: float) -> dict[str, Any]:
    series = scheduler.series_of(request.model_id)
    return {
        "model_id": request.model_id,
        "reasons": sorted(request.reasons),
        "requested_at": request.requested_at,
        "has_active": request.has_active,
        "ready": scheduler.is_ready(request, now),
        "bars": min(scheduler.available(symbol, tf) for symbol, tf in series),
        "min_bars": scheduler.policy.min_bars,
    }
