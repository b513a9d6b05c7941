"""Promotion gates (DESIGN §5): pure logic, no I/O, no clock.

A freshly trained and evaluated version passes four gates, in this order:

1. ``min_trades``: its out-of-sample walk-forward record has at least
   ``min_trades`` round trips;
2. ``min_dsr``: its deflated Sharpe ratio (a probability) is at least
   ``min_dsr``;
3. ``min_profit_factor``: its profit factor is at least ``min_profit_factor``
   (a record with trades but no losing one has an unbounded profit factor
   and passes);
4. ``beats_active``: when the model has an active version, the new version
   *beats* it head to head (below); without an active version it passes.

**Beats**, precisely: both models, as stored, forecast the same decisions,
those of the new version's last walk-forward test window that neither model
saw in training (for the active version: decisions after its validation
targets ended); both forecasts go through the same position rule and costed
backtest; the new version beats the active one when its annualized Sharpe
ratio after costs on those decisions is strictly higher. No common unseen
decision, a comparison made against another version than the current active
one, or an active version whose artifact was refused: the gate fails (a
model is never replaced on missing evidence).

All gates passed: the version becomes a ``candidate``; otherwise it is
``rejected`` and the first failing gate is the reason. The first version of
a model to pass is promoted to ``active`` at once (there is nothing to
shadow it against). A version that beat the active one stays a candidate
(``promote`` false): it predicts live in shadow, and the inference service
promotes it when its live record beats the active version's over
``[promotion] shadow_min_bars`` bars, or retires it after
``shadow_max_bars`` (docs/inference.md). With ``shadow_min_bars = 0`` the
backtest head-to-head decides alone: the version is promoted at once.

The shadow decision lives here too (``shadow_verdict``, ``shadow_outcome``):
every rule that moves a version to ``active`` is in this module; the
registry applies them (``storage.registry``), the lifecycle calls ``judge``
after training (``lifecycle.decisions``) and the inference service the
shadow rules on the live record (``inference.shadow``), as ``simulate`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from quantum_daemon.domain.config import PromotionConfig
from quantum_daemon.domain.stages import Stage

GATES = ("min_trades", "min_dsr", "min_profit_factor", "beats_active")


@dataclass(frozen=True)
class HeadToHead:
    """The new and the active version on the same unseen test decisions."""

    active_version: str
    n_decisions: int
    first_ts: int | None  # open time of the first compared decision bar (ms)
    last_ts: int | None
    new_sharpe: float
    active_sharpe: float
    new_total_return: float = 0.0
    active_total_return: float = 0.0
    refused: str | None = None  # the active artifact failed its integrity check

    def to_dict(self) -> dict[str, Any]:
        return _scalar_fields(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> HeadToHead | None:
        if not raw:
            return None
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class Verdict:
    stage: Literal[Stage.CANDIDATE, Stage.REJECTED]
    gates: tuple[GateResult, ...]
    promote: bool
    reason: str

    @property
    def failed_gate(self) -> str | None:
        return next((g.gate for g in self.gates if not g.passed), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "promote": self.promote,
            "reason": self.reason,
            "failed_gate": self.failed_gate,
            "gates": [g.to_dict() for g in self.gates],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Verdict:
        """The inverse of ``to_dict`` (``failed_gate`` follows from the gates);
        raises ``ValueError``, ``KeyError`` or ``TypeError`` on another shape."""
        stage: Literal[Stage.CANDIDATE, Stage.REJECTED]
        if raw["stage"] == Stage.CANDIDATE:
            stage = Stage.CANDIDATE
        elif raw["stage"] == Stage.REJECTED:
            stage = Stage.REJECTED
        else:
            raise ValueError(f"a verdict's stage is candidate or rejected, not {raw['stage']!r}")
        gates = tuple(GateResult(**g) for g in raw["gates"])
        return cls(stage, gates, bool(raw["promote"]), str(raw["reason"]))


def _scalar_fields(value: HeadToHead) -> dict[str, Any]:
    # not ``asdict``: its deep copy of scalars made reading a large registry slow
    return {name: getattr(value, name) for name in value.__dataclass_fields__}


def judge(
    metrics: Mapping[str, Any],
    active_version: str | None,
    head_to_head: HeadToHead | None,
    cfg: PromotionConfig,
) -> Verdict:
    """The verdict on a new version; see the module docstring."""
    gates = (
        trades_gate(metrics, cfg.min_trades),
        dsr_gate(metrics, cfg.min_dsr),
        profit_factor_gate(metrics, cfg.min_profit_factor),
        beats_active_gate(active_version, head_to_head),
    )
    failed = next((g for g in gates if not g.passed), None)
    if failed is not None:
        return Verdict(Stage.REJECTED, gates, False, f"{failed.gate}: {failed.detail}")
    if active_version is None:
        return Verdict(Stage.CANDIDATE, gates, True, "first version of the model to pass the gates")
    beats = f"beats {active_version}: {gates[3].detail}"
    if cfg.shadow_min_bars == 0:
        return Verdict(Stage.CANDIDATE, gates, True, beats)
    waits = f"; waits in shadow for {cfg.shadow_min_bars} bars of live record"
    return Verdict(Stage.CANDIDATE, gates, False, beats + waits)


def trades_gate(metrics: Mapping[str, Any], minimum: int) -> GateResult:
    trades = _number(metrics.get("trades"))
    passed = trades is not None and trades >= minimum
    return GateResult("min_trades", passed, f"trades {_fmt(trades)} (minimum {minimum})")


def dsr_gate(metrics: Mapping[str, Any], minimum: float) -> GateResult:
    dsr = _number(metrics.get("dsr"))
    passed = dsr is not None and dsr >= minimum
    return GateResult("min_dsr", passed, f"deflated Sharpe {_fmt(dsr)} (minimum {minimum})")


def profit_factor_gate(metrics: Mapping[str, Any], minimum: float) -> GateResult:
    pf = _number(metrics.get("profit_factor"))
    trades = _number(metrics.get("trades")) or 0
    if pf is None and trades > 0:
        return GateResult("min_profit_factor", True, "no losing trade (unbounded)")
    passed = pf is not None and pf >= minimum
    return GateResult("min_profit_factor", passed, f"profit factor {_fmt(pf)} (minimum {minimum})")


def beats_active_gate(active_version: str | None, h2h: HeadToHead | None) -> GateResult:
    if active_version is None:
        return GateResult("beats_active", True, "no active version")
    if h2h is None:
        return GateResult("beats_active", False, "no head-to-head comparison")
    if h2h.active_version != active_version:
        return GateResult(
            "beats_active",
            False,
            f"compared with {h2h.active_version}, but {active_version} is active now",
        )
    if h2h.refused:
        return GateResult("beats_active", False, f"active artifact refused: {h2h.refused}")
    if h2h.n_decisions == 0:
        return GateResult("beats_active", False, "no test decision unseen by both versions")
    passed = h2h.new_sharpe > h2h.active_sharpe
    detail = (
        f"sharpe {h2h.new_sharpe:.3f} vs {h2h.active_sharpe:.3f} "
        f"over {h2h.n_decisions} common test decisions"
    )
    return GateResult("beats_active", passed, detail)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


# -- the shadow period: a candidate's live record against the active one --
@dataclass(frozen=True)
class ShadowVerdict:
    """A candidate's live record against the active version's on the same bars."""

    bars: int
    candidate_loss: float
    active_loss: float
    promote: bool


def shadow_verdict(
    candidate: Mapping[int, float], active: Mapping[int, float], min_bars: int
) -> ShadowVerdict:
    """Compare mean losses over the bars both versions were scored on; the
    candidate wins with at least ``min_bars`` such bars and a lower mean."""
    common = sorted(set(candidate) & set(active))
    if not common:
        return ShadowVerdict(0, math.nan, math.nan, False)
    cand = math.fsum(candidate[t] for t in common) / len(common)
    act = math.fsum(active[t] for t in common) / len(common)
    return ShadowVerdict(len(common), cand, act, len(common) >= min_bars and cand < act)


def shadow_outcome(
    verdicts: Mapping[str, ShadowVerdict], max_bars: int
) -> tuple[str | None, list[str]]:
    """Of several candidates judged against the same active version: the one
    to promote (the lowest mean loss among those that won; the other winners
    stay candidates, to face the new active version) and those whose record
    ran out (``max_bars`` common bars without winning), by version."""
    winners = sorted(v for v, verdict in verdicts.items() if verdict.promote)
    best = min(winners, key=lambda v: verdicts[v].candidate_loss, default=None)
    expired = sorted(
        v for v, verdict in verdicts.items() if not verdict.promote and verdict.bars >= max_bars
    )
    return best, expired
