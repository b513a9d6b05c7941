"""The simulation's training desk: the jobs the scheduler hands out, run in
the executor on the bars up to the simulated time, then judged as the
lifecycle judges them (``lifecycle.decisions.judge_version``,
``retire_superseded``)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.core.context_features import (
    FeatureContext,
    empty_bars,
    feature_context,
    reference_window,
)
from quantum_daemon.core.scheduling import Scheduler, TrainRequest
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.signals import RecordedSignals
from quantum_daemon.lifecycle.decisions import judge_version
from quantum_daemon.simulate.inputs import SimulationSeries
from quantum_daemon.simulate.records import TimelineEntry, VersionRecord
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.executor import JobOutcome
from quantum_daemon.training.jobs import ActiveRef, TrainJobResult, TrainJobSpec, run_job


class TrainingDesk:
    """Mixed into ``Simulation``, whose state it shares."""

    cfg: Config
    params: dict[str, Mapping[str, Any]]
    series: dict[tuple[str, str], SimulationSeries]
    step: int
    keys: list[ModelKey]
    data_dir: Path
    registry: Registry
    scheduler: Scheduler
    versions: dict[tuple[str, str], VersionRecord]
    newest: dict[str, str]
    weights: dict[str, float]
    live_families: tuple[str, ...]
    timeline: list[TimelineEntry]
    trust_history: list[tuple[int, dict[str, float]]]
    job_seconds: dict[str, float]
    _trials: dict[str, int]
    jobs_done: int
    jobs_failed: int
    now_ms: int
    _loaded_cache: dict[str, list[tuple[str, str]]]
    _run_all: Callable[[Sequence[Any], Callable[[Any], Any]], Awaitable[list[JobOutcome]]]
    _known_models: Callable[[], set[str]]
    _track: Callable[[VersionRecord], None]
    recorded_signals: Callable[[tuple[str, str], int], RecordedSignals]
    multi: dict[str, tuple[str, ...]]
    add_views: Callable[[VersionRecord, Mapping[str, int]], list[VersionRecord]]
    reference_bars: dict[str, Bars]

    async def _train_ready(self, now_ms: int, index: dict[tuple[str, str], int]) -> None:
        """Start every job the scheduler hands out now; simulated time stands
        still while they run (in the executor's workers)."""
        while True:
            requests = []
            while (r := self.scheduler.next_job(now_ms / 1000, lambda _k: True)) is not None:
                requests.append(r)
            if not requests:
                return
            specs = [self._train_spec(r, now_ms) for r in requests]
            outcomes = await self._run_all(specs, run_job)
            for request, spec, outcome in zip(requests, specs, outcomes, strict=True):
                self._completed(request, spec, outcome)

    def _history(self, symbol: str, tf: str, now_ms: int) -> Any:
        """The series' last ``history_bars`` bars closed by ``now_ms``."""
        series = self.series[(symbol, tf)]
        end = int(np.searchsorted(series.bars.ts, now_ms - self.step, side="right"))
        return series.bars.slice(max(0, end - self.cfg.training.history_bars), end)

    def _train_spec(self, request: TrainRequest, now_ms: int) -> TrainJobSpec:
        key = request.key
        multi = tuple(self._history(s, key.tf, now_ms) for s in self.multi.get(key.model_id, ()))
        bars = multi[0] if multi else self._history(key.symbol, key.tf, now_ms)
        active = self.registry.active_version(key.model_id) if self._has(key) else None
        path = self.registry.version_path(key.model_id, active) if active else None
        return TrainJobSpec(
            job_id=f"{key.model_id}-{now_ms}",
            family=key.family,
            bars=bars,
            data_dir=str(self.data_dir),
            version_time=self._version_time(key.model_id, now_ms),
            evaluation=self.cfg.evaluation,
            seed=self.cfg.models.seed,
            timeout_s=self.cfg.training.job_timeout_s,
            active=ActiveRef(active, str(path)) if active and path else None,
            params={  # config.toml's, then the simulation's own for the family
                **self.cfg.models.params.for_model(key.family, key.model_id),
                **self.params.get(key.family, {}),
            },
            tuning=None if multi else self.cfg.tuning.plan_for(key.family, key.model_id),
            series=multi,
            signals=(
                self.recorded_signals((key.symbol, key.tf), int(bars.ts[-1]))
                if key.family in SIZER_FAMILIES and len(bars)
                else None
            ),
            # a global model takes no context features (docs/families.md)
            context=None if multi else self._feature_context(key.family, bars),
        )

    def _feature_context(self, family: str, bars: Bars) -> FeatureContext | None:
        """The reference series of the simulation over ``bars``' span (none
        after it: the job's bars end at the simulated time)."""
        if len(bars) == 0:
            return None
        return feature_context(self.cfg.features, family, bars, self._reference_bars)

    def _reference_bars(self, symbol: str, bars: Bars) -> Bars:
        reference = self.reference_bars.get(symbol)
        if reference is None or reference.tf != bars.tf:  # the job fails naming it
            return empty_bars(symbol, bars.tf)
        return reference_window(reference, bars)

    def _has(self, key: ModelKey) -> bool:
        return key.model_id in self._known_models()

    def _version_time(self, model_id: str, now_ms: int) -> datetime:
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        names = artifacts.list_versions(self.data_dir, model_id)
        if not names:
            return now
        newest = datetime.strptime(names[-1], artifacts.VERSION_FORMAT).replace(tzinfo=UTC)
        return max(now, newest + timedelta(seconds=1))

    def _completed(self, request: TrainRequest, spec: TrainJobSpec, outcome: JobOutcome) -> None:
        mid = request.model_id
        ok = outcome.ok
        family = request.key.family
        self.job_seconds[family] = self.job_seconds.get(family, 0.0) + outcome.seconds
        if not ok:
            self.jobs_failed += 1
            self.timeline.append(
                TimelineEntry(self.now_ms, "training_failed", mid, "", outcome.reason or "")
            )
        else:
            self._judge_new(spec, outcome.result)
        has_active = self._has(request.key) and self.registry.active_version(mid) is not None
        self.scheduler.job_finished(mid, self.now_ms / 1000, ok, has_active)

    def _judge_new(self, spec: TrainJobSpec, result: TrainJobResult) -> None:
        """The lifecycle's decision on a trained version (``judge_version``)."""
        self.jobs_done += 1
        mid, version = result.model_id, result.version
        symbols = [b.symbol for b in spec.series] or [spec.symbol]
        at = {s: self._bar_index(s, spec.tf) for s in symbols}
        self.versions[(mid, version)] = VersionRecord(
            mid, spec.family, spec.symbol, version, result.artifact_dir, at[symbols[0]],
            live_from=at[symbols[0]],
            horizon=int(result.metrics.get("horizon") or self.cfg.evaluation.horizon),
        )  # fmt: skip
        views = self.add_views(self.versions[(mid, version)], at) if spec.series else []
        for record in views or [self.versions[(mid, version)]]:
            self._track(record)
        self.newest[mid] = version
        self.timeline.append(TimelineEntry(self.now_ms, "trained", mid, version, _headline(result)))
        self._confirm(self.registry.register(mid, version, result.head_to_head, spec.job_id), mid)
        self._trials.clear()  # the ledger counted the version
        _, events = judge_version(self.registry, self.cfg.promotion, mid, version)
        self._note(events, mid)
        self._note(self.registry.retire_superseded(mid, self.cfg.inference.max_candidates), mid)
        self._refresh_live()

    def _bar_index(self, symbol: str, tf: str) -> int:
        """The index in the series of the first bar after the simulated now."""
        bars = self.series[(symbol, tf)].bars
        return int(np.searchsorted(bars.ts, self.now_ms - self.step, side="right"))

    def _note(self, events: Sequence[Any], model_id: str) -> None:
        """Put the registry's events on the timeline, which is where a
        simulation publishes them, and confirm them out of the outbox (a
        growing outbox made every later registry write slower)."""
        for event in events:
            data = event.data
            kind = event.type.removeprefix("model.")
            detail = data.get("gate") or data.get("reason") or ""
            self.timeline.append(
                TimelineEntry(self.now_ms, kind, model_id, data.get("version", ""), str(detail))
            )
            if event.type in ("model.promoted", "model.retired"):
                self.scheduler.set_active(
                    model_id, self.registry.active_version(model_id) is not None
                )
        self._confirm(events, model_id)

    def _confirm(self, events: Sequence[Any], model_id: str) -> None:
        if events:
            self.registry.confirm_events(model_id, [e.data["event_id"] for e in events])

    def _refresh_live(self) -> None:
        """The live forecasting families, as the inference service aligns trust."""
        self._loaded_cache.clear()
        live = sorted(
            {
                k.family
                for k in self.keys
                if self._has(k) and self.registry.active_version(k.model_id) is not None
            }
        )
        if tuple(live) != self.live_families:
            self.live_families = tuple(live)
            from quantum_daemon.core import trust

            self.weights = trust.align(self.weights, list(live)) if live else {}
            self.trust_history.append((self.now_ms, dict(self.weights)))


def _headline(result: TrainJobResult) -> str:
    m = result.metrics
    parts = [f"{k}={m[k]:.4g}" for k in ("sharpe", "dsr", "profit_factor") if _num(m.get(k))]
    return " ".join([*parts, f"trades={m.get('trades')}"])


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
