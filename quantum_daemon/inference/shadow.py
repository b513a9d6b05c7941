"""Shadow promotion, expiry and superseded retirement (DESIGN §7).

Each candidate's live record is compared with its active version's
(``promotion.shadow_verdict``): a candidate that beats it over ``[promotion]
shadow_min_bars`` bars is promoted (``model.promoted``, reason ``shadow``;
the old version is retired in the same registry write; of several winners,
the lowest mean loss), one that has not after ``shadow_max_bars`` common
bars is retired (``model.retired``, reason ``shadow``). Candidates beyond a
model's ``[inference] max_candidates`` newest are retired as ``superseded``.

Every transition goes through the registry (outbox, exactly once) and acts
only on versions still candidates, so a replayed round emits nothing twice.
"""

from __future__ import annotations

from quantum_daemon.core.promotion import ShadowVerdict, shadow_outcome, shadow_verdict
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.stages import Stage
from quantum_daemon.inference.context import InferenceState, IoThread, Transitions
from quantum_daemon.inference.messages import LoadedModel
from quantum_daemon.inference.metrics import InferenceMetrics
from quantum_daemon.inference.records import PredictionRecords
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.registry.registry import SUPERSEDED, RegistryError

log = get_logger()

SHADOW_REASON = "shadow"


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

    async def judge(self, model_ids: list[str]) -> None:
        """Each model's loaded candidates against its loaded active version."""
        for model_id in model_ids:
            of_model = [m for m in self.state.loaded if m.model_id == model_id]
            active = next((m for m in of_model if m.stage == Stage.ACTIVE), None)
            candidates = [m for m in of_model if m.stage == Stage.CANDIDATE]
            if active is not None and candidates:
                await self._judge_candidates(active, candidates)

    async def _judge_candidates(self, active: LoadedModel, candidates: list[LoadedModel]) -> None:
        """Expire the candidates whose record ran out, then promote the best winner."""
        min_bars = self.cfg.promotion.shadow_min_bars
        active_losses = await self.io.run(self.records.losses, active.model_id, active.version)
        verdicts: dict[str, ShadowVerdict] = {}
        for candidate in candidates:
            losses = await self.io.run(self.records.losses, candidate.model_id, candidate.version)
            verdicts[candidate.version] = shadow_verdict(losses, active_losses, min_bars)
        best, expired = shadow_outcome(verdicts, self.cfg.promotion.shadow_max_bars)
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
        )
        await self.transitions.transitioned(model_id, events)

    async def _expire(
        self, candidate: LoadedModel, active: LoadedModel, verdict: ShadowVerdict
    ) -> None:
        """Retire a candidate whose shadow record reached ``shadow_max_bars``
        common bars without beating the active version (only while that
        version is still the active one)."""
        model_id = candidate.model_id
        detail = (
            f"mean loss {verdict.candidate_loss:.6f} vs {verdict.active_loss:.6f} "
            f"of {active.version} over {verdict.bars} common bars"
        )
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
