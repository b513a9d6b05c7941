"""From a worker's answer to signals and records: pure, no I/O, no clock."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from quantum_daemon.core.ensemble import (
    EnsembleForecast,
    MemberForecast,
    Signal,
    SizerDecision,
    build_signal,
    combine,
    flat_signal,
    held_flat,
)
from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.stages import Stage
from quantum_daemon.inference.messages import ModelAnswer, PredictAnswer
from quantum_daemon.inference.rounds import due_ts
from quantum_daemon.storage.prediction_records import NO_VIEW, DecisionRow, PredictionRow


def member_at(m: ModelAnswer, k: int) -> MemberForecast:
    """One model's answer on the ``k``-th bar, with its quantiles if it has them."""
    quantiles = None if m.quantiles is None else m.quantiles[k]
    return MemberForecast(m.family, m.model_id, m.version, m.mu[k], m.p_up[k], quantiles)


def members_at(models: Sequence[ModelAnswer], k: int) -> list[MemberForecast]:
    """The active forecasters' answers on the ``k``-th bar: the ensemble's members."""
    return [
        member_at(m, k)
        for m in models
        if m.stage == Stage.ACTIVE and m.family not in SIZER_FAMILIES
    ]


def sizer_at(models: Sequence[ModelAnswer], k: int) -> SizerDecision | None:
    """The active sizer's position on the ``k``-th bar, if one is live."""
    for m in models:
        if m.stage == Stage.ACTIVE and m.family in SIZER_FAMILIES and m.position is not None:
            return SizerDecision(m.position[k], m.model_id, m.version)
    return None


def shadow_members_at(models: Sequence[ModelAnswer], k: int) -> list[MemberForecast]:
    """The newest candidate forecaster of each family on the ``k``-th bar:
    the shadow pool, where nothing is active."""
    newest: dict[str, ModelAnswer] = {}
    for m in models:
        if m.stage == Stage.CANDIDATE and m.family not in SIZER_FAMILIES:
            if m.family not in newest or m.version > newest[m.family].version:
                newest[m.family] = m
    return [member_at(m, k) for m in newest.values()]


def signals_of(
    answer: PredictAnswer,
    weights: Sequence[Mapping[str, float]],
    latency_ms: float,
    threshold: float,
    killed: str | None = None,
) -> list[Signal]:
    """One signal per answered bar, pooled under that bar's trust ``weights``
    (one mapping per bar of ``answer.ts``); ``threshold`` is the plain
    rule's (``[evaluation] position_threshold``). A bar without an active
    forecaster gets a flat signal with the reason and the shadow pool; with
    the series' kill switch on (``killed``: why), a live one is held flat."""
    signals: list[Signal] = []
    for k, ts in enumerate(answer.ts):
        members = members_at(answer.models, k)
        if not members:
            signals.append(_flat(answer, k, ts, weights[k], latency_ms, threshold))
            continue
        ensemble = combine(members, weights[k])
        sizer = sizer_at(answer.models, k)
        signal = build_signal(answer.symbol, answer.tf, ts, ensemble, sizer, latency_ms, threshold)
        signals.append(signal if killed is None else held_flat(signal, killed))
    return signals


def _flat(
    answer: PredictAnswer,
    k: int,
    ts: int,
    weights: Mapping[str, float],
    latency_ms: float,
    threshold: float,
) -> Signal:
    shadow_members = shadow_members_at(answer.models, k)
    shadow: EnsembleForecast | None = None
    if shadow_members:
        shadow = combine(shadow_members, weights)
        families = ", ".join(sorted(m.family for m in shadow_members))
        reason = f"no active model: the record rule has not passed; in shadow: {families}"
    else:
        reason = "no active model and no candidate"
    return flat_signal(answer.symbol, answer.tf, ts, reason, shadow, latency_ms, threshold)


def prediction_rows(answer: PredictAnswer, step_ms: int) -> list[PredictionRow]:
    rows: list[PredictionRow] = []
    for m in answer.models:
        for k, ts in enumerate(answer.ts):
            position = None if m.position is None else m.position[k]
            rows.append(
                PredictionRow(
                    model_id=m.model_id,
                    version=m.version,
                    symbol=answer.symbol,
                    tf=answer.tf,
                    ts=ts,
                    family=m.family,
                    stage=m.stage,
                    due_ts=due_ts(ts, m.horizon, step_ms, position is not None),
                    mu=m.mu[k],
                    p_up=m.p_up[k],
                    position=position,
                    quantiles=None if m.quantiles is None else m.quantiles[k],
                )
            )
    return rows


def decision_rows(signals: Sequence[Signal]) -> list[DecisionRow]:
    """The published signals as records; a flat one with its shadow pool's
    view (what position families are scored against), or no view at all."""
    rows = []
    for s in signals:
        view = s.view()
        mu, p_up, plain = view or (0.0, 0.5, 0.0)
        status = NO_VIEW if view is None else s.status
        rows.append(
            DecisionRow(s.symbol, s.tf, s.ts, mu, p_up, s.position, plain, s.latency_ms, status)
        )
    return rows
