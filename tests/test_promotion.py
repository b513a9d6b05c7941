"""Promotion, stage 1: a version's own test window (minimum trades, profit
factor, beating flat, buy-and-hold and the naive forecast, calibration,
beating the active version head to head) makes it a candidate; stage 2: the
model's record (deflated Sharpe under the trial count) makes it active."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantum_daemon.core.promotion import (
    GATES,
    HeadToHead,
    RecordEvidence,
    evidence_of,
    first_activation,
    judge,
    record_gate,
)
from quantum_daemon.domain.config import PromotionConfig

CFG = PromotionConfig(min_trades=5, min_dsr=0.95, min_profit_factor=1.1, min_record_bars=100)
NO_RECORD_RULE = PromotionConfig(min_trades=5, min_dsr=0.0, min_profit_factor=1.1)
STRONG = RecordEvidence(bars=500, sharpe=0.2, dsr=0.99, n_trials=10)
WEAK = RecordEvidence(bars=500, sharpe=0.01, dsr=0.60, n_trials=10)


def metrics(**overrides: Any) -> dict[str, Any]:
    return {
        "trades": 12,
        "dsr": 0.8,
        "profit_factor": 1.4,
        "sharpe": 1.2,
        "total_return": 0.04,
        "mase": 0.97,
        "ece": 0.05,
        "baselines": {"buy_and_hold": {"sharpe": 0.3}, "flat": {"sharpe": 0.0}},
        **overrides,
    }


def h2h(new: float, active: float, version: str = "v1", n: int = 100) -> HeadToHead:
    return HeadToHead(version, n, 0, 1, new_sharpe=new, active_sharpe=active)


def test_a_passing_version_is_a_candidate_and_active_only_on_its_models_record() -> None:
    waits = judge(metrics(), None, None, CFG)
    assert waits.stage == "candidate" and not waits.promote
    assert [g.gate for g in waits.gates] == list(GATES)
    assert waits.reason.startswith("waits in shadow: record of 0 bars")
    weak = judge(metrics(), None, None, CFG, WEAK)
    assert weak.stage == "candidate" and not weak.promote
    strong = judge(metrics(), None, None, CFG, STRONG)
    assert strong.promote and strong.reason.startswith("first version to pass: record deflated")


def test_with_the_record_rule_off_the_first_passing_version_is_promoted() -> None:
    verdict = judge(metrics(), None, None, NO_RECORD_RULE)
    assert verdict.stage == "candidate" and verdict.promote


def test_each_failing_sanity_gate_rejects_and_is_named() -> None:
    cases = {
        "min_trades": metrics(trades=4),
        "min_profit_factor": metrics(profit_factor=1.05),
        "beats_baselines": metrics(total_return=-0.01),
        "max_ece": metrics(ece=0.3),
    }
    for gate, values in cases.items():
        verdict = judge(values, None, None, CFG, STRONG)
        assert verdict.stage == "rejected" and not verdict.promote
        assert verdict.failed_gate == gate
        assert verdict.reason.startswith(gate)


def test_the_baselines_gate_needs_flat_buy_and_hold_and_the_naive_forecast_beaten() -> None:
    hold = {"buy_and_hold": {"sharpe": 1.5}}
    assert judge(metrics(baselines=hold), None, None, CFG).failed_gate == "beats_baselines"
    assert judge(metrics(mase=1.02), None, None, CFG).failed_gate == "beats_baselines"
    assert judge(metrics(total_return=0.0), None, None, CFG).failed_gate == "beats_baselines"
    # a position family has no forecast error: nothing to compare with the naive one
    assert judge(metrics(mase=None), None, None, CFG).stage == "candidate"
    off = PromotionConfig(beat_baselines=False, min_dsr=0.0)
    assert judge(metrics(total_return=-0.5, mase=2.0), None, None, off).promote


def test_calibration_gate_can_be_switched_off_and_passes_without_a_measure() -> None:
    assert judge(metrics(ece=None), None, None, CFG).failed_gate is None
    off = PromotionConfig(max_ece=1.0, min_dsr=0.0)
    assert judge(metrics(ece=0.4), None, None, off).promote


def test_missing_or_nan_metrics_fail_their_gate() -> None:
    assert judge({"profit_factor": 2.0}, None, None, CFG).failed_gate == "min_trades"
    assert judge(metrics(sharpe=float("nan")), None, None, CFG).failed_gate == "beats_baselines"


def test_a_record_without_losing_trades_has_an_unbounded_profit_factor() -> None:
    assert judge(metrics(profit_factor=None), None, None, CFG).stage == "candidate"
    no_trades = judge(metrics(trades=0, profit_factor=None), None, None, PromotionConfig(0))
    assert no_trades.failed_gate == "min_profit_factor"


def test_a_version_that_beats_the_active_one_waits_in_shadow() -> None:
    verdict = judge(metrics(), "v1", h2h(new=1.5, active=0.9), CFG, STRONG)
    assert verdict.stage == "candidate" and not verdict.promote
    assert verdict.failed_gate is None
    assert verdict.reason.startswith("beats v1: sharpe 1.500 vs 0.900")
    assert f"waits in shadow for {CFG.shadow_min_bars} bars" in verdict.reason


def test_without_a_shadow_period_the_backtest_promotes_at_once_if_the_record_passes() -> None:
    at_once = PromotionConfig(min_trades=5, min_profit_factor=1.1, shadow_min_bars=0)
    verdict = judge(metrics(), "v1", h2h(new=1.5, active=0.9), at_once, STRONG)
    assert verdict.stage == "candidate" and verdict.promote
    assert "shadow" not in verdict.reason
    assert not judge(metrics(), "v1", h2h(new=1.5, active=0.9), at_once, WEAK).promote


def test_a_tie_or_a_worse_record_does_not_beat_the_active_version() -> None:
    assert judge(metrics(), "v1", h2h(1.0, 1.0), CFG).failed_gate == "beats_active"
    assert judge(metrics(), "v1", h2h(0.5, 1.0), CFG).failed_gate == "beats_active"


def test_missing_evidence_never_replaces_the_active_version() -> None:
    no_comparison = judge(metrics(), "v1", None, CFG)
    stale = judge(metrics(), "v2", h2h(2.0, 0.0, version="v1"), CFG)
    empty = judge(metrics(), "v1", h2h(2.0, 0.0, n=0), CFG)
    refused = judge(
        metrics(), "v1", HeadToHead("v1", 0, None, None, 0.0, 0.0, refused="sha256"), CFG
    )
    for verdict in (no_comparison, stale, empty, refused):
        assert verdict.stage == "rejected" and verdict.failed_gate == "beats_active"
    assert "v2 is active now" in stale.reason
    assert "refused" in refused.reason


def test_the_record_gate_needs_enough_bars_and_a_significant_deflated_sharpe() -> None:
    assert not record_gate(None, CFG).passed
    short = RecordEvidence(bars=99, sharpe=1.0, dsr=1.0, n_trials=1)
    assert not record_gate(short, CFG).passed
    assert record_gate(STRONG, CFG).passed and not record_gate(WEAK, CFG).passed
    assert record_gate(None, NO_RECORD_RULE).passed
    assert first_activation(["v1", "v3", "v2"], record_gate(STRONG, CFG)) == "v3"
    assert first_activation(["v1"], record_gate(WEAK, CFG)) is None


def test_more_trials_deflate_the_same_record() -> None:
    rng = np.random.default_rng(3)
    returns = 0.0004 + 0.01 * rng.standard_normal(2000)
    one, many = evidence_of(returns, 1), evidence_of(returns, 300)
    assert one.sharpe == many.sharpe and one.dsr > many.dsr
    assert evidence_of(np.zeros(50), 5).dsr == 0.0  # always flat: no evidence
    assert math.isnan(evidence_of(np.array([]), 5).dsr)


def test_verdicts_and_comparisons_round_trip_as_json_shapes() -> None:
    comparison = h2h(1.5, 0.9)
    assert HeadToHead.from_dict(comparison.to_dict()) == comparison
    assert HeadToHead.from_dict(None) is None
    verdict = judge(metrics(trades=1), None, None, CFG).to_dict()
    assert verdict["failed_gate"] == "min_trades" and len(verdict["gates"]) == len(GATES)
    assert STRONG.to_dict() == {"bars": 500, "sharpe": 0.2, "dsr": 0.99, "n_trials": 10}
