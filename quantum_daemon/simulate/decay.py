"""The simulation's decay desk: drift, age and the kill switch, as the
inference service applies them live (``core.drift``, ``core.kill_switch``,
``inference.shadow.retire_stale``; docs/judge.md):

- every scored loss of a live version feeds its drift detector; a drift
  puts ``drift_detected`` on the timeline and asks the scheduler for a
  retraining (trigger ``drift``);
- every published ensemble forecast whose horizon has elapsed feeds the
  series' kill switch; while it is on, the published position is 0;
- every ``STALE_CHECK_BARS`` bars an active version whose model has not
  trained successfully for ``max_age_bars`` bars is retired (``stale``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from quantum_daemon.core.drift import DriftWatch
from quantum_daemon.core.kill_switch import KillSwitch, ensemble_loss
from quantum_daemon.core.scheduling import Scheduler, Trigger
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.inference.shadow import STALE_CHECK_BARS, STALE_REASON
from quantum_daemon.simulate.inputs import SimulationSeries
from quantum_daemon.simulate.records import ACTIVE, BarRecord, TimelineEntry, VersionRecord
from quantum_daemon.storage.registry.registry import Registry


class DecayDesk:
    """Mixed into ``Simulation``, whose state it shares."""

    cfg: Config
    series: dict[tuple[str, str], SimulationSeries]
    step: int
    keys: list[ModelKey]
    registry: Registry
    scheduler: Scheduler
    versions: dict[tuple[str, str], VersionRecord]
    newest: dict[str, str]
    bars: dict[tuple[str, str], list[BarRecord]]
    timeline: list[TimelineEntry]
    now_ms: int
    drift: DriftWatch | None
    kill: KillSwitch
    _loaded: Callable[[str], list[tuple[str, str]]]
    _note: Callable[[Sequence[Any], str], None]
    _refresh_live: Callable[[], None]
    keys_of: Callable[[str], list[ModelKey]]
    record_of: Callable[[str, str, str], VersionRecord]

    def _watch_drift(self, model_id: str, version: str, ts: int, loss: float) -> None:
        drift = self.drift
        found = drift.observe(model_id, version, ts, loss, self.step) if drift else None
        if found is None:
            return
        detail = f"mean loss {found.mean_before:.4f} -> {found.mean_after:.4f}"
        entry = TimelineEntry(self.now_ms, "drift_detected", model_id, version, detail)
        self.timeline.append(entry)
        self.scheduler.request(model_id, self.now_ms / 1000, Trigger.DRIFT)

    def _score_ensemble(self, key: tuple[str, str], i: int) -> None:
        """The ensemble forecast published ``horizon`` bars before bar ``i``
        is settled by it: its Brier score feeds the series' kill switch."""
        horizon = self.cfg.evaluation.horizon
        history = self.bars[key]
        if self.kill.window == 0 or len(history) <= horizon:
            return
        made = history[-1 - horizon]  # bar i itself is the newest row
        signal = made.signal
        if signal is None or signal.get("status", "live") == "flat":
            return
        close = self.series[key].bars.close
        loss = ensemble_loss(float(signal["p_up"]), made.close, float(close[i]))
        change = self.kill.observe(key, loss) if math.isfinite(loss) else None
        if change is not None:
            kind = "kill_switch" if change.killed else "kill_released"
            self.timeline.append(TimelineEntry(self.now_ms, kind, "", "", change.reason))

    def _retire_stale(self, key: tuple[str, str], i: int) -> None:
        max_age = self.cfg.promotion.max_age_bars
        if max_age == 0 or i % STALE_CHECK_BARS:
            return
        for k in self.keys_of(key[0]):
            if k.tf != key[1] or k.model_id not in self.newest:
                continue
            active = next((v for v, st in self._loaded(k.model_id) if st == ACTIVE), None)
            # a global model's age on this series: its view's (``simulate.multi``)
            age = i - self.record_of(k.model_id, self.newest[k.model_id], key[0]).trained_at
            if active is None or age <= max_age:
                continue
            detail = f"no successful training for {age} bars (max_age_bars {max_age})"
            events = self.registry.retire(k.model_id, active, f"{STALE_REASON}: {detail}")
            self._note(events, k.model_id)
            self._refresh_live()
