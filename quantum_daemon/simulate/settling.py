"""The simulation's settling desk: the predictions each bar decides are
scored (``inference.rounds.settle``), one trust round per settling bar
(``trust_store.plan_round``), and the candidates' shadow records judged
(``promotion.shadow_verdict``, ``shadow_outcome``; the registry's
``promote_candidate`` / ``retire_candidate``), as the inference service
does live."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from quantum_daemon.core.evaluation.diebold_mariano import overlap_lags
from quantum_daemon.core.promotion import (
    GateResult,
    evidence_of,
    first_activation,
    record_gate,
    shadow_outcome,
    shadow_verdict,
)
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.families import POSITION_FAMILIES
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.inference.rounds import SCALE_WINDOW, due_ts, settle, trust_rounds
from quantum_daemon.simulate.inputs import SimulationSeries
from quantum_daemon.simulate.records import (
    ACTIVE,
    CANDIDATE,
    BarRecord,
    Prediction,
    VersionRecord,
    signal_view,
)
from quantum_daemon.storage.prediction_records import DuePrediction
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.storage.trust_store import StoredState, plan_round

SHADOW_REASON = "shadow"
RECORD_REASON = "record"


class SettlingDesk:
    """Mixed into ``Simulation``, whose state it shares."""

    cfg: Config
    series: dict[tuple[str, str], SimulationSeries]
    step: int
    tf: str
    cost_rate: float
    registry: Registry
    versions: dict[tuple[str, str], VersionRecord]
    bars: dict[tuple[str, str], list[BarRecord]]
    bar_row: dict[tuple[str, str], dict[int, int]]
    weights: dict[str, float]
    live_families: tuple[str, ...]
    trust_history: list[tuple[int, dict[str, float]]]
    keys: list[ModelKey]
    _rank: dict[tuple[str, str], int]
    _lags: dict[str, set[int]]
    model_records: dict[str, dict[int, tuple[str, float]]]  # model -> bar -> (version, net)
    _record_ts: dict[str, list[int]]  # model -> its record's bars, in order
    _trials: dict[str, int]  # the ledger's n_trials per model, until a version registers
    _loaded: Callable[[str], list[tuple[str, str]]]
    _watch_drift: Callable[[str, str, int, float], None]
    _note: Callable[[Sequence[Any], str], None]
    _refresh_live: Callable[[], None]
    keys_of: Callable[[str], list[ModelKey]]
    record_of: Callable[[str, str, str], VersionRecord]
    note_loss: Callable[[str, str, str, int, float], None]
    record_net: Callable[[str, str, str, int, float], float]

    async def _settle(self, key: tuple[str, str], i: int) -> None:
        """Settle what bar ``i`` decides: forecasts made ``horizon`` bars ago
        and positions made one bar ago (``rounds.due_ts``)."""
        bars = self.series[key].bars
        history = self.bars[key]
        due: list[DuePrediction] = []
        for record, stage, p, n in self._made_for(key, int(bars.ts[i])):
            is_position = record.family in POSITION_FAMILIES
            due.append(self._due(record, stage, p, history, n, is_position))
        if not due:
            return
        start = max(0, (_index_of(bars.ts, min(d.ts for d in due)) or 0) - SCALE_WINDOW - 1)
        window = bars.slice(start, i + 1)
        settled = settle(due, window, self.cost_rate, self.cfg.evaluation.position_threshold)
        for d, s in zip(due, settled, strict=True):
            if s.loss is not None:
                self.note_loss(d.model_id, d.version, d.symbol, d.ts, s.loss)
            if s.net is not None:
                net = self.record_net(d.model_id, d.version, d.symbol, d.ts, s.net)
                self._add_to_record(d.model_id, d.ts, d.version, net)
            if s.loss is not None:
                self._watch_drift(d.model_id, d.version, d.ts, s.loss)
        for round_ts, scores in trust_rounds(due, settled, self.step):
            state = StoredState(self.weights, frozenset(), None)
            plan = plan_round(state, scores, self.live_families, round_ts, self.cfg.trust)
            if plan.round.changed:
                self.weights = dict(plan.round.after)
                self.trust_history.append((round_ts, dict(self.weights)))
        self._judge_shadow(self._with_candidates(key[0]))

    def _made_for(
        self, key: tuple[str, str], bar_ts: int
    ) -> list[tuple[VersionRecord, str, Prediction, int]]:
        """(record, stage, prediction, row) of every prediction that bar
        ``bar_ts`` settles, in the order the versions were trained: only the
        rows one lag back are read, not every version ever trained."""
        history, by_ts = self.bars[key], self.bar_row[key]
        found = []
        for lag in sorted(self._lags.get(key[0], ())):
            n = by_ts.get(bar_ts - lag * self.step)
            if n is None:
                continue
            for mine, (stage, p) in history[n].forecasts.items():
                record = self.record_of(mine[0], mine[1], key[0])
                if _lag(record) == lag:
                    found.append((record, stage, p, n))
        found.sort(key=lambda made: self._rank[(made[0].model_id, made[0].version)])
        return found

    def _track(self, record: VersionRecord) -> None:
        """Remember a new version's rank and settling lag."""
        self._rank.setdefault((record.model_id, record.version), len(self._rank))
        self._lags.setdefault(record.symbol, set()).add(_lag(record))

    def _due(
        self,
        record: VersionRecord,
        stage: str,
        p: Prediction,
        history: list[BarRecord],
        n: int,
        is_position: bool,
    ) -> DuePrediction:
        def plain_at(k: int) -> float | None:
            """The plain rule's position as recorded (``signals.decision_rows``):
            the live pool's, or where the signal was flat the shadow pool's."""
            signal = history[k].signal if k >= 0 else None
            if signal is None:
                return None
            view = signal_view(signal)
            return 0.0 if view is None else view[2]

        mine = (record.model_id, record.version)
        previous = history[n - 1].forecasts.get(mine) if n > 0 else None
        previous_position = None if previous is None else previous[1].position
        ts = history[n].ts
        return DuePrediction(
            model_id=record.model_id,
            version=record.version,
            family=record.family,
            stage=stage,
            symbol=record.symbol,
            tf=self.tf,
            ts=ts,
            due_ts=due_ts(ts, record.horizon, self.step, is_position),
            mu=p.mu,
            p_up=p.p_up,
            position=p.position if is_position else None,
            previous_position=previous_position,
            plain=plain_at(n),
            previous_plain=plain_at(n - 1),
            previous_mu=None if previous is None else previous[1].mu,
            previous_p_up=None if previous is None else previous[1].p_up,
        )

    def _add_to_record(self, model_id: str, ts: int, version: str, net: float) -> None:
        """The model's record keeps the newest version's return per bar
        (``records.model_record``)."""
        record = self.model_records.setdefault(model_id, {})
        held = record.get(ts)
        if held is None:
            bisect.insort(self._record_ts.setdefault(model_id, []), ts)
        if held is None or version >= held[0]:  # same version: a multi model's new mean
            record[ts] = (version, net)

    def record_rule(self, model_id: str) -> GateResult:
        promotion = self.cfg.promotion
        if promotion.min_dsr == 0:
            return record_gate(None, promotion)
        record = self.model_records.get(model_id, {})
        recent = self._record_ts.get(model_id, [])[-promotion.record_bars :]
        returns = np.array([record[t][1] for t in recent], dtype=np.float64)
        if model_id not in self._trials:
            self._trials[model_id] = self.registry.n_trials(
                model_id, promotion.trial_scope, self.cfg.evaluation.n_trials
            )
        variance = self.cfg.evaluation.trial_sharpe_variance or None
        return record_gate(evidence_of(returns, self._trials[model_id], variance), promotion)

    def _with_candidates(self, symbol: str) -> list[str]:
        """The series' models with a loaded candidate."""
        return [
            k.model_id
            for k in self.keys_of(symbol)
            if any(st == CANDIDATE for _, st in self._loaded(k.model_id))
        ]

    def _judge_shadow(self, model_ids: list[str]) -> None:
        promotion = self.cfg.promotion
        changed = False  # re-reading the registry every bar was most of the loop's time
        for model_id in model_ids:
            loaded = self._loaded(model_id)
            active = next((v for v, st in loaded if st == ACTIVE), None)
            candidates = [v for v, st in loaded if st == CANDIDATE]
            if not candidates:
                continue
            record = self.record_rule(model_id)
            if active is None:
                first = first_activation(candidates, record)
                if first is not None:
                    events = self.registry.promote_first(model_id, first, RECORD_REASON)
                    self._note(events, model_id)
                    changed = True
                continue
            active_losses = self.versions[(model_id, active)].losses
            verdicts = {}
            for v in candidates:
                mine = self.versions[(model_id, v)]
                lags = overlap_lags(mine.horizon, mine.family in POSITION_FAMILIES)
                verdicts[v] = shadow_verdict(
                    mine.losses, active_losses, promotion.shadow_min_bars, lags,
                    promotion.dm_alpha,
                )  # fmt: skip
            best, expired = shadow_outcome(verdicts, promotion.shadow_max_bars, record)
            changed = changed or bool(expired) or best is not None
            for version in expired:
                detail = verdicts[version].describe(active)
                events = self.registry.retire_candidate(
                    model_id, version, active, SHADOW_REASON, detail
                )
                self._note(events, model_id)
            if best is not None:
                events = self.registry.promote_candidate(model_id, best, active, SHADOW_REASON)
                self._note(events, model_id)
        if changed:
            self._refresh_live()


def _lag(record: VersionRecord) -> int:
    """Bars between a prediction and the bar that settles it (``rounds.due_ts``)."""
    return 1 if record.family in POSITION_FAMILIES else record.horizon


def _index_of(ts: np.ndarray, value: int) -> int | None:
    i = int(np.searchsorted(ts, value))
    return i if i < len(ts) and int(ts[i]) == value else None
