"""Promotion: two stages, each with its own bar to clear (DESIGN §5,
docs/judge.md). Pure logic, no I/O, no clock.

**Stage 1, a version's own test window (sanity).** A freshly trained and
evaluated version passes these gates, in this order, to become a
``candidate`` (else it is ``rejected``, the first failing gate the reason):

1. ``min_trades``: its walk-forward test record has at least ``min_trades``
   round trips;
2. ``min_profit_factor`` (a record with trades but no losing one has an
   unbounded profit factor and passes);
3. ``beats_baselines`` (``beat_baselines``): after costs its total return
   beats flat's (> 0), its Sharpe ratio beats buy-and-hold's on the same
   test bars, and a forecaster's MASE is below 1 (it beats the naive
   forecast; a position family has none and passes);
4. ``max_ece``: the expected calibration error of its ``p_up`` is at most
   ``max_ece`` (1 switches it off; none measured passes);
5. ``beats_active``: when the model has an active version, the new version
   *beats* it head to head on the decisions neither saw in training (both
   through the same position rule and costed backtest, strictly higher
   Sharpe); no common unseen decision, a comparison against another
   version than the active one, or an active artifact refused: it fails.

About 300 test bars are too few for significance: these gates only keep out
what is plainly broken. A multi-symbol version (``{family}_multi_{TF}``,
its metrics holding ``per_symbol``) passes each of gates 1-4 only if it
passes on every symbol's test record (``per_symbol_gates``).

**Stage 2, the model's record.** A candidate carries
weight in the signal (``active``) only when

- the model's record (``RecordEvidence``: the out-of-sample returns of its
  versions, live and simulated, newest version per bar, over the last
  ``record_bars`` bars) has at least ``min_record_bars`` bars and a deflated
  Sharpe ratio of at least ``min_dsr``, deflated by the trials of
  ``trial_scope`` (the ledger; ``evaluation.n_trials`` is the floor), and
- against an active version: its live losses beat the active version's on
  at least ``shadow_min_bars`` common bars by a one-sided Diebold–Mariano
  test with a Newey–West variance (``horizon - 1`` lags for overlapping
  forecasts) at level ``dm_alpha`` (``core.evaluation.diebold_mariano``).

``min_dsr = 0`` switches the record rule off (a model's first candidate is
active at once, as before this rule); ``dm_alpha = 1`` switches the test
off (a lower mean loss wins). With ``shadow_min_bars = 0`` a version that
beat the active one head to head is promoted at once (if the record rule
passes). A candidate not promoted after ``shadow_max_bars`` common bars is
retired. Without an active version the newest candidate is promoted as soon
as the record rule passes.

Every rule that moves a version to ``active`` is in this module; the
registry applies them (``storage.registry``), the lifecycle calls ``judge``
after training (``lifecycle.decisions``) and the inference service the
shadow rules on the live record (``inference.shadow``), as ``simulate`` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from quantum_daemon.core.evaluation.diebold_mariano import diebold_mariano, paired
from quantum_daemon.core.evaluation.significance import dsr_of_returns, sharpe_moments
from quantum_daemon.domain.config import PromotionConfig
from quantum_daemon.domain.stages import Stage

# a multi-symbol version's metrics hold each symbol's under this key (training.offline_multi)
PER_SYMBOL_KEY = "per_symbol"

GATES = ("min_trades", "min_profit_factor", "beats_baselines", "max_ece", "beats_active")
RECORD_GATE = "min_dsr"


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


@dataclass(frozen=True)
class RecordEvidence:
    """A model's out-of-sample record (its versions' returns, newest version
    per bar) and its deflated Sharpe ratio under the ledger's trials."""

    bars: int
    sharpe: float  # per bar
    dsr: float
    n_trials: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "bars": self.bars,
            "sharpe": _finite_or_none(self.sharpe),
            "dsr": _finite_or_none(self.dsr),
            "n_trials": self.n_trials,
        }


def evidence_of(
    returns: np.ndarray, n_trials: int, trial_variance: float | None = None
) -> RecordEvidence:
    """A record's evidence: its per-bar Sharpe and deflated Sharpe ratio
    (``significance.dsr_of_returns``) under ``n_trials`` trials."""
    n = int(returns.size)
    if n < 3 or float(np.std(returns)) == 0.0:
        return RecordEvidence(n, 0.0 if n else math.nan, 0.0 if n else math.nan, n_trials)
    dsr = dsr_of_returns(returns, max(n_trials, 1), trial_variance or None)
    return RecordEvidence(n, sharpe_moments(returns).sharpe, dsr, n_trials)


def record_gate(evidence: RecordEvidence | None, cfg: PromotionConfig) -> GateResult:
    """Stage 2's first rule: the model's record is long enough and its
    deflated Sharpe at least ``min_dsr`` (0: off)."""
    if cfg.min_dsr == 0:
        return GateResult(RECORD_GATE, True, "record rule off (min_dsr 0)")
    if evidence is None or evidence.bars < cfg.min_record_bars:
        bars = 0 if evidence is None else evidence.bars
        return GateResult(
            RECORD_GATE, False, f"record of {bars} bars (judged from {cfg.min_record_bars})"
        )
    dsr = _number(evidence.dsr)
    passed = dsr is not None and dsr >= cfg.min_dsr
    detail = (
        f"record deflated Sharpe {_fmt(dsr)} over {evidence.bars} bars, "
        f"{evidence.n_trials} trials (minimum {cfg.min_dsr})"
    )
    return GateResult(RECORD_GATE, passed, detail)


def judge(
    metrics: Mapping[str, Any],
    active_version: str | None,
    head_to_head: HeadToHead | None,
    cfg: PromotionConfig,
    evidence: RecordEvidence | None = None,
) -> Verdict:
    """The verdict on a new version; see the module docstring. ``evidence``
    is the model's record when the version is judged (None: none yet)."""
    per_symbol = metrics.get(PER_SYMBOL_KEY)
    sanity = (
        per_symbol_gates(per_symbol, cfg)
        if isinstance(per_symbol, Mapping) and per_symbol
        else sanity_gates(metrics, cfg)
    )
    gates = (*sanity, beats_active_gate(active_version, head_to_head))
    failed = next((g for g in gates if not g.passed), None)
    if failed is not None:
        return Verdict(Stage.REJECTED, gates, False, f"{failed.gate}: {failed.detail}")
    record = record_gate(evidence, cfg)
    if active_version is None:
        if record.passed:
            return Verdict(Stage.CANDIDATE, gates, True, f"first version to pass: {record.detail}")
        return Verdict(Stage.CANDIDATE, gates, False, f"waits in shadow: {record.detail}")
    beats = f"beats {active_version}: {gates[4].detail}"
    if cfg.shadow_min_bars == 0 and record.passed:
        return Verdict(Stage.CANDIDATE, gates, True, beats)
    waits = f"; waits in shadow for {cfg.shadow_min_bars} bars of live record"
    return Verdict(Stage.CANDIDATE, gates, False, beats + waits)


def sanity_gates(metrics: Mapping[str, Any], cfg: PromotionConfig) -> tuple[GateResult, ...]:
    """Stage 1's gates on one test record, in order."""
    return (
        trades_gate(metrics, cfg.min_trades),
        profit_factor_gate(metrics, cfg.min_profit_factor),
        baselines_gate(metrics, cfg.beat_baselines),
        calibration_gate(metrics, cfg.max_ece),
    )


def per_symbol_gates(
    per_symbol: Mapping[str, Any], cfg: PromotionConfig
) -> tuple[GateResult, ...]:
    """A multi-symbol version's stage 1: each gate must pass on every
    symbol's test record (the model weighs in each symbol's ensemble, so it
    is held to what a single-symbol model of each series is held to); a
    failing gate names the first symbol it fails on."""
    by_symbol = {s: sanity_gates(m, cfg) for s, m in per_symbol.items() if isinstance(m, Mapping)}
    gates = []
    for i, name in enumerate(g.gate for g in next(iter(by_symbol.values()))):
        failed = next(((s, g[i]) for s, g in by_symbol.items() if not g[i].passed), None)
        if failed is not None:
            gates.append(GateResult(name, False, f"{failed[0]}: {failed[1].detail}"))
        else:
            gates.append(GateResult(name, True, f"passes on all {len(by_symbol)} symbols"))
    return tuple(gates)


def trades_gate(metrics: Mapping[str, Any], minimum: int) -> GateResult:
    trades = _number(metrics.get("trades"))
    passed = trades is not None and trades >= minimum
    return GateResult("min_trades", passed, f"trades {_fmt(trades)} (minimum {minimum})")


def profit_factor_gate(metrics: Mapping[str, Any], minimum: float) -> GateResult:
    pf = _number(metrics.get("profit_factor"))
    trades = _number(metrics.get("trades")) or 0
    if pf is None and trades > 0:
        return GateResult("min_profit_factor", True, "no losing trade (unbounded)")
    passed = pf is not None and pf >= minimum
    return GateResult("min_profit_factor", passed, f"profit factor {_fmt(pf)} (minimum {minimum})")


def baselines_gate(metrics: Mapping[str, Any], required: bool) -> GateResult:
    """After costs on its test window: beats flat, buy-and-hold and the naive forecast."""
    if not required:
        return GateResult("beats_baselines", True, "off")
    total, sharpe = _number(metrics.get("total_return")), _number(metrics.get("sharpe"))
    baselines = metrics.get("baselines")
    hold = baselines.get("buy_and_hold", {}) if isinstance(baselines, Mapping) else {}
    hold_sharpe = _number(hold.get("sharpe")) if isinstance(hold, Mapping) else None
    mase = _number(metrics.get("mase"))
    if total is None or total <= 0.0:
        return GateResult("beats_baselines", False, f"total return {_fmt(total)} <= flat's 0")
    if sharpe is None or (hold_sharpe is not None and sharpe <= hold_sharpe):
        detail = f"sharpe {_fmt(sharpe)} <= buy-and-hold's {_fmt(hold_sharpe)}"
        return GateResult("beats_baselines", False, detail)
    if mase is not None and mase >= 1.0:
        return GateResult("beats_baselines", False, f"MASE {_fmt(mase)} >= the naive forecast's 1")
    detail = f"return {_fmt(total)}, sharpe {_fmt(sharpe)} vs buy-and-hold {_fmt(hold_sharpe)}"
    return GateResult("beats_baselines", True, detail + f", MASE {_fmt(mase)}")


def calibration_gate(metrics: Mapping[str, Any], maximum: float) -> GateResult:
    ece = _number(metrics.get("ece"))
    if maximum >= 1.0 or ece is None:
        return GateResult("max_ece", True, f"ECE {_fmt(ece)} (maximum {maximum})")
    return GateResult("max_ece", ece <= maximum, f"ECE {_fmt(ece)} (maximum {maximum})")


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


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# -- the shadow period: a candidate's live record against the active one --
@dataclass(frozen=True)
class ShadowVerdict:
    """A candidate's live record against the active version's on the same bars."""

    bars: int
    candidate_loss: float
    active_loss: float
    promote: bool
    statistic: float = math.nan  # Diebold–Mariano (nan: test off)
    p_value: float = math.nan

    def describe(self, active_version: str) -> str:
        test = "" if math.isnan(self.p_value) else f", DM {self.statistic:.3f} p {self.p_value:.4f}"
        return (
            f"mean loss {self.candidate_loss:.6f} vs {self.active_loss:.6f} "
            f"of {active_version} over {self.bars} common bars{test}"
        )


def shadow_verdict(
    candidate: Mapping[int, float],
    active: Mapping[int, float],
    min_bars: int,
    lags: int = 0,
    alpha: float = 1.0,
) -> ShadowVerdict:
    """Compare the losses on the bars both versions were scored on: the
    candidate wins with at least ``min_bars`` such bars and, with ``alpha``
    below 1, a one-sided Diebold–Mariano rejection of "no better" at level
    ``alpha`` (``lags`` HAC lags); with ``alpha`` 1, a lower mean loss."""
    active_losses, candidate_losses = paired(active, candidate)
    n = len(active_losses)
    if n == 0:
        return ShadowVerdict(0, math.nan, math.nan, False)
    cand = math.fsum(candidate_losses) / n
    act = math.fsum(active_losses) / n
    if alpha >= 1.0:
        return ShadowVerdict(n, cand, act, n >= min_bars and cand < act)
    test = diebold_mariano(active_losses, candidate_losses, lags)
    wins = n >= min_bars and test.rejects(alpha)
    return ShadowVerdict(n, cand, act, wins, test.statistic, test.p_value)


def shadow_outcome(
    verdicts: Mapping[str, ShadowVerdict], max_bars: int, record: GateResult | None = None
) -> tuple[str | None, list[str]]:
    """Of several candidates judged against the same active version: the one
    to promote (the lowest mean loss among those that won, when the model's
    ``record`` gate passes; the other winners stay candidates, to face the
    new active version) and those whose record ran out (``max_bars`` common
    bars without winning), by version."""
    allowed = record is None or record.passed
    winners = sorted(v for v, verdict in verdicts.items() if verdict.promote and allowed)
    best = min(winners, key=lambda v: verdicts[v].candidate_loss, default=None)
    expired = sorted(
        v for v, verdict in verdicts.items() if not verdict.promote and verdict.bars >= max_bars
    )
    return best, expired


def first_activation(candidates: list[str], record: GateResult) -> str | None:
    """A model without an active version: its newest candidate, once the
    model's record passes (``record_gate``)."""
    return max(candidates) if candidates and record.passed else None
