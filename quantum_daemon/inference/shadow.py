"""Shadow promotion, expiry and superseded retirement (DESIGN §7, docs/judge.md).

A model with candidates is judged after every scoring round. Its record
(``records.record_returns``: the costed returns of its versions' positions,
newest version per bar) gives the record rule (``promotion.record_gate``:
deflated Sharpe at least ``[promotion] min_dsr`` under the trial ledger's
count, ``trial_scope``). Without an active version, its newest candidate is
promoted once the record rule passes (``model.promoted``, reason
``record``). With one, each candidate's live losses are compared with the
active version's (``promotion.shadow_verdict``: a one-sided Diebold–Mariano
test at ``dm_alpha``, HAC lags ``horizon - 1``): a candidate that wins over
at least ``shadow_min_bars`` common bars, while the record rule passes, is
promoted (reason ``shadow``; the old version is retired in the same
registry write; of several winners, the lowest mean loss), one that has not
been promoted after ``shadow_max_bars`` common bars is retired
(``model.retired``, reason ``shadow``). Candidates beyond a model's
``[inference] max_candidates`` newest are retired as ``superseded``.

Every transition goes through the registry (outbox, exactly once) and acts
only on versions still candidates, so a replayed round emits nothing twice.
"""

from __future__ import annotations

import time

from quantum_daemon.core.evaluation.diebold_mariano import overlap_lags
from quantum_daemon.core.promotion import (
    GateResult,
    RecordEvidence,
    ShadowVerdict,
    evidence_of,
    first_activation,
    record_gate,
    shadow_outcome,
    shadow_verdict,
)
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.families import POSITION_FAMILIES
from quantum_daemon.domain.stages import Stage
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.inference.context import InferenceState, IoThread, Transitions
from quantum_daemon.inference.messages import LoadedModel
from quantum_daemon.inference.metrics import InferenceMetrics
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.prediction_records import PredictionRecords
from quantum_daemon.storage.registry.registry import SUPERSEDED, RegistryError

log = get_logger()

SHADOW_REASON = "shadow"
RECORD_REASON = "record"
STALE_REASON = "stale"
STALE_CHECK_BARS = 10  # a series' active versions' age is checked every this many bars
TRIALS_FRESH_S = 30.0  # the ledger changes once per training: re-read it at most this often


class ShadowReferee:
    """Judges the loaded candidates against their active versions; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        state: InferenceState,
        records: PredictionRecords,
        io: IoThread,
        transitions: Transitions,
        metrics: InferenceMetrics,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.records = records
        self.io = io
        self.transitions = transitions
        self.registry = transitions.registry
        self.metrics = metrics
        self._age_checked: dict[tuple[str, str], int] = {}  # series -> bar last checked
        self._trials: dict[str, tuple[float, int]] = {}  # model -> (read at, n_trials)

    def models_to_judge(self) -> list[str]:
        """The models with a loaded candidate."""
        return sorted({m.model_id for m in self.state.loaded if m.stage == Stage.CANDIDATE})

    async def judge(self, model_ids: list[str]) -> None:
        """Each model's loaded candidates: against its record, and against
        its loaded active version when it has one."""
        for model_id in model_ids:
            of_model = [m for m in self.state.loaded if m.model_id == model_id]
            active = next((m for m in of_model if m.stage == Stage.ACTIVE), None)
            candidates = [m for m in of_model if m.stage == Stage.CANDIDATE]
            if not candidates:
                continue
            record, evidence = await self.io.run(self.record_rule, model_id)
            self.state.records[model_id] = (record, evidence)
            if active is None:
                await self._promote_first(candidates, record)
            else:
                await self._judge_candidates(active, candidates, record)

    def record_rule(self, model_id: str) -> tuple[GateResult, RecordEvidence | None]:
        """The model's record and its gate (in the I/O thread)."""
        promotion = self.cfg.promotion
        if promotion.min_dsr == 0:
            return record_gate(None, promotion), None
        returns = self.records.record_returns(model_id, promotion.record_bars)
        n_trials = self._n_trials(model_id)
        variance = self.cfg.evaluation.trial_sharpe_variance or None
        evidence = evidence_of(returns, n_trials, variance)
        return record_gate(evidence, promotion), evidence

    def _n_trials(self, model_id: str) -> int:
        """The ledger's count for the model's record (every state.json of
        the zoo is read for it), at most ``TRIALS_FRESH_S`` old."""
        now = time.monotonic()
        read_at, n = self._trials.get(model_id, (-TRIALS_FRESH_S, 0))
        if now - read_at >= TRIALS_FRESH_S:
            promotion = self.cfg.promotion
            n = self.registry.n_trials(
                model_id, promotion.trial_scope, self.cfg.evaluation.n_trials
            )
            self._trials[model_id] = (now, n)
        return n

    async def _promote_first(self, candidates: list[LoadedModel], record: GateResult) -> None:
        version = first_activation([c.version for c in candidates], record)
        if version is None:
            return
        candidate = next(c for c in candidates if c.version == version)
        events = await self.io.run(
            self.registry.promote_first, candidate.model_id, version, RECORD_REASON
        )
        if not events:
            return
        self.state.loaded = tuple(m for m in self.state.loaded if m != candidate)
        self.state.totals.promotions += 1
        self.metrics.promotions.inc()
        log.info(
            "model.promoted",
            model_id=candidate.model_id,
            version=version,
            reason=RECORD_REASON,
            detail=record.detail,
        )
        await self.transitions.transitioned(candidate.model_id, events)

    async def _judge_candidates(
        self, active: LoadedModel, candidates: list[LoadedModel], record: GateResult
    ) -> None:
        """Expire the candidates whose record ran out, then promote the best winner."""
        promotion = self.cfg.promotion
        active_losses = await self.io.run(self.records.losses, active.model_id, active.version)
        verdicts: dict[str, ShadowVerdict] = {}
        for candidate in candidates:
            losses = await self.io.run(self.records.losses, candidate.model_id, candidate.version)
            lags = overlap_lags(candidate.horizon, candidate.family in POSITION_FAMILIES)
            verdicts[candidate.version] = shadow_verdict(
                losses, active_losses, promotion.shadow_min_bars, lags, promotion.dm_alpha
            )
        best, expired = shadow_outcome(verdicts, promotion.shadow_max_bars, record)
        by_version = {c.version: c for c in candidates}
        for version in expired:
            await self._expire(by_version[version], active, verdicts[version])
        if best is not None:
            await self._promote(by_version[best], active, verdicts[best])

    async def _promote(
        self, candidate: LoadedModel, active: LoadedModel, verdict: ShadowVerdict
    ) -> None:
        model_id = candidate.model_id
        try:
            events = await self.io.run(
                self.registry.promote_candidate,
                model_id,
                candidate.version,
                active.version,
                SHADOW_REASON,
            )
        except RegistryError as exc:  # the registry moved on meanwhile (an operator)
            log.warning("inference.shadow_promotion_refused", model_id=model_id, error=str(exc))
            return
        if not events:  # no longer a candidate, or another version is active: a stale round
            return
        # until the worker reports again, this model has no active version to judge against
        self.state.loaded = tuple(m for m in self.state.loaded if m not in (candidate, active))
        self.state.totals.promotions += 1
        self.metrics.promotions.inc()
        log.info(
            "model.promoted",
            model_id=model_id,
            version=candidate.version,
            replaced=active.version,
            reason=SHADOW_REASON,
            bars=verdict.bars,
            candidate_loss=round(verdict.candidate_loss, 6),
            active_loss=round(verdict.active_loss, 6),
            dm_statistic=verdict.statistic,
            dm_p_value=verdict.p_value,
        )
        await self.transitions.transitioned(model_id, events)

    async def _expire(
        self, candidate: LoadedModel, active: LoadedModel, verdict: ShadowVerdict
    ) -> None:
        """Retire a candidate whose shadow record reached ``shadow_max_bars``
        common bars without beating the active version (only while that
        version is still the active one)."""
        model_id = candidate.model_id
        detail = verdict.describe(active.version)
        try:
            events = await self.io.run(
                self.registry.retire_candidate,
                model_id,
                candidate.version,
                active.version,
                SHADOW_REASON,
                detail,
            )
        except RegistryError as exc:  # the registry moved on meanwhile (the version is gone)
            log.warning("inference.shadow_retirement_refused", model_id=model_id, error=str(exc))
            return
        if not events:  # no longer a candidate, or another version is active: a stale round
            return
        self.state.loaded = tuple(m for m in self.state.loaded if m != candidate)
        self.state.totals.shadow_retired += 1
        self.metrics.retirements.labels(SHADOW_REASON).inc()
        log.info(
            "model.retired",
            model_id=model_id,
            version=candidate.version,
            reason=SHADOW_REASON,
            detail=detail,
        )
        await self.transitions.transitioned(model_id, events)

    async def retire_stale(self, symbol: str, tf: str, upto_ts: int) -> None:
        """Retire the series' active versions whose model has not trained
        successfully (a new version, whatever its verdict) for more than
        ``[promotion] max_age_bars`` bars: they leave the ensemble, and the
        model, now without an active version, trains first. A global model
        is checked on each of its symbols' series, its age counted from the
        newest bar it was trained on."""
        max_age, step = self.cfg.promotion.max_age_bars, timeframe_ms(tf)
        checked = self._age_checked.get((symbol, tf))
        if max_age == 0 or (checked is not None and upto_ts < checked + STALE_CHECK_BARS * step):
            return
        self._age_checked[(symbol, tf)] = upto_ts
        multi = self.cfg.models.multi
        for m in self.state.loaded:
            on_series = (m.symbol, m.tf) == (symbol, tf) or (
                m.tf == tf and symbol in multi.symbols_of(m.model_id)  # a global model
            )
            if m.stage != Stage.ACTIVE or not on_series:
                continue
            newest = await self.io.run(self.registry.newest, m.model_id)
            if newest is None or not newest[1]:  # no data window recorded: age unknown
                continue
            age = (upto_ts - newest[1]) // step
            if age > max_age:
                await self._retire_stale(m, age)

    async def _retire_stale(self, model: LoadedModel, age: int) -> None:
        detail = (
            f"no successful training for {age} bars "
            f"(max_age_bars {self.cfg.promotion.max_age_bars})"
        )
        try:
            events = await self.io.run(
                self.registry.retire, model.model_id, model.version, f"{STALE_REASON}: {detail}"
            )
        except RegistryError as exc:
            log.warning(
                "inference.stale_retirement_refused", model_id=model.model_id, error=str(exc)
            )
            return
        self.state.loaded = tuple(m for m in self.state.loaded if m != model)
        self.state.totals.stale += 1
        self.metrics.retirements.labels(STALE_REASON).inc()
        log.warning("model.stale", model_id=model.model_id, version=model.version, detail=detail)
        await self.transitions.transitioned(model.model_id, events)

    async def retire_superseded(self) -> None:
        """Retire every model's candidates beyond its ``max_candidates`` newest."""
        keep = self.cfg.inference.max_candidates
        for model_id in await self.io.run(self.registry.model_ids):
            events = await self.io.run(self.registry.retire_superseded, model_id, keep)
            for event in events:
                self.state.totals.superseded += 1
                self.metrics.retirements.labels(SUPERSEDED).inc()
                log.info(
                    "model.retired",
                    model_id=model_id,
                    version=event.data["version"],
                    reason=SUPERSEDED,
                )
            if events:
                await self.transitions.transitioned(model_id, events)
