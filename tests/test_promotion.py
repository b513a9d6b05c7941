"""Promotion gates: minimum trades, deflated Sharpe, profit factor, and beating
the active version head to head on the same unseen test decisions; the first
passing version is promoted at once, a later one waits in shadow."""

from __future__ import annotations

from typing import Any

from quantum_daemon.core.promotion import GATES, HeadToHead, judge
from quantum_daemon.domain.config import PromotionConfig

CFG = PromotionConfig(min_trades=5, min_dsr=0.5, min_profit_factor=1.1)


def metrics(**overrides: Any) -> dict[str, Any]:
    return {"trades": 12, "dsr": 0.8, "profit_factor": 1.4, "sharpe": 1.2, **overrides}


def h2h(new: float, active: float, version: str = "v1", n: int = 100) -> HeadToHead:
    return HeadToHead(version, n, 0, 1, new_sharpe=new, active_sharpe=active)


def test_the_first_passing_version_becomes_a_candidate_and_is_promoted() -> None:
    verdict = judge(metrics(), None, None, CFG)
    assert verdict.stage == "candidate" and verdict.promote
    assert [g.gate for g in verdict.gates] == list(GATES)
    assert verdict.reason == "first version of the model to pass the gates"


def test_each_failing_gate_rejects_and_is_named() -> None:
    cases = {
        "min_trades": metrics(trades=4),
        "min_dsr": metrics(dsr=0.49),
        "min_profit_factor": metrics(profit_factor=1.05),
    }
    for gate, values in cases.items():
        verdict = judge(values, None, None, CFG)
        assert verdict.stage == "rejected" and not verdict.promote
        assert verdict.failed_gate == gate
        assert verdict.reason.startswith(gate)


def test_missing_or_nan_metrics_fail_their_gate() -> None:
    assert judge(metrics(dsr=None), None, None, CFG).failed_gate == "min_dsr"
    assert judge(metrics(dsr=float("nan")), None, None, CFG).failed_gate == "min_dsr"
    assert judge({"dsr": 0.9}, None, None, CFG).failed_gate == "min_trades"


def test_a_record_without_losing_trades_has_an_unbounded_profit_factor() -> None:
    assert judge(metrics(profit_factor=None), None, None, CFG).stage == "candidate"
    no_trades = judge(metrics(trades=0, profit_factor=None), None, None, PromotionConfig(0))
    assert no_trades.failed_gate == "min_profit_factor"


def test_a_version_that_beats_the_active_one_waits_in_shadow() -> None:
    verdict = judge(metrics(), "v1", h2h(new=1.5, active=0.9), CFG)
    assert verdict.stage == "candidate" and not verdict.promote
    assert verdict.failed_gate is None
    assert verdict.reason.startswith("beats v1: sharpe 1.500 vs 0.900")
    assert "waits in shadow for 48 bars" in verdict.reason


def test_without_a_shadow_period_the_backtest_promotes_at_once() -> None:
    at_once = PromotionConfig(min_trades=5, min_dsr=0.5, min_profit_factor=1.1, shadow_min_bars=0)
    verdict = judge(metrics(), "v1", h2h(new=1.5, active=0.9), at_once)
    assert verdict.stage == "candidate" and verdict.promote
    assert verdict.reason.startswith("beats v1: sharpe 1.500 vs 0.900")
    assert "shadow" not in verdict.reason
    first = judge(metrics(), None, None, at_once)
    assert first.promote and first.reason == "first version of the model to pass the gates"


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


def test_verdicts_and_comparisons_round_trip_as_json_shapes() -> None:
    comparison = h2h(1.5, 0.9)
    assert HeadToHead.from_dict(comparison.to_dict()) == comparison
    assert HeadToHead.from_dict(None) is None
    verdict = judge(metrics(trades=1), None, None, CFG).to_dict()
    assert verdict["failed_gate"] == "min_trades" and len(verdict["gates"]) == 4
