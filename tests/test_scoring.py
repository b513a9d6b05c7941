"""Scoring live predictions: forecasts by Brier, positions by costed excess return."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantum_daemon.core.evaluation.backtest import cost_rate, position_from_forecast, run_backtest
from quantum_daemon.core.promotion import shadow_outcome, shadow_verdict
from quantum_daemon.core.scoring import (
    bar_net_return,
    compare_with_plain_rule,
    position_loss,
    realized_log_return,
    return_scale,
    score_forecast,
    score_position,
)

RATE = cost_rate(10.0, 2.0)


def test_forecast_scores_by_hand() -> None:
    score = score_forecast(mu=0.01, p_up=0.8, realized=0.03)
    assert score.brier == pytest.approx(0.04)
    assert score.loss == score.brier
    assert score.log_loss == pytest.approx(-math.log(0.8))
    assert score.mu_error == pytest.approx(0.02)


def test_a_zero_return_counts_as_not_up() -> None:
    assert score_forecast(0.0, 0.3, 0.0).brier == pytest.approx(0.09)


def test_log_loss_of_a_certain_wrong_forecast_is_finite() -> None:
    assert math.isfinite(score_forecast(0.0, 1.0, -0.01).log_loss)


@given(st.floats(0, 1), st.floats(-0.5, 0.5))
def test_forecast_loss_lies_in_the_unit_interval(p_up: float, realized: float) -> None:
    assert 0.0 <= score_forecast(0.0, p_up, realized).loss <= 1.0


def test_brier_is_proper() -> None:
    """The expected Brier score under a true probability q is least at p = q."""
    q = 0.7
    grid = np.linspace(0, 1, 101)
    expected = [
        q * score_forecast(0, p, 1).brier + (1 - q) * score_forecast(0, p, -1).brier for p in grid
    ]
    assert grid[int(np.argmin(expected))] == pytest.approx(q)


def test_realized_log_return() -> None:
    assert realized_log_return(100.0, 110.0) == pytest.approx(math.log(1.1))


def test_bar_net_return_matches_the_backtest() -> None:
    rng = np.random.default_rng(3)
    positions = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=50)
    returns = rng.normal(0, 0.01, size=50)
    expected = run_backtest(positions, returns, RATE).net
    previous = np.concatenate([[0.0], positions[:-1]])
    got = [
        bar_net_return(p, q, r, RATE) for p, q, r in zip(positions, previous, returns, strict=True)
    ]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)


def test_position_loss_anchors() -> None:
    assert position_loss(0.0, 0.01) == pytest.approx(0.25)
    assert position_loss(0.01, 0.01) == pytest.approx(1 / (1 + 3 * math.e))
    assert position_loss(-0.01, 0.01) == pytest.approx(1 / (1 + 3 / math.e))
    assert position_loss(1e6, 1e-9) == 0.0
    assert position_loss(-1e6, 1e-9) == pytest.approx(1.0)


@given(st.floats(-1, 1), st.floats(-1, 1), st.floats(1e-6, 0.1))
def test_position_loss_is_bounded_and_decreasing(a: float, b: float, scale: float) -> None:
    la, lb = position_loss(a, scale), position_loss(b, scale)
    assert 0.0 <= la <= 1.0
    if a < b:
        assert la >= lb


def test_position_beating_the_plain_rule_scores_below_parity() -> None:
    # the market rose 1%; the family was long, the plain rule flat
    score = score_position((0.0, 1.0), (0.0, 0.0), asset_return=0.01, rate=RATE, scale=0.01)
    assert score.net == pytest.approx(0.01 - RATE)
    assert score.plain_net == 0.0
    assert score.excess == pytest.approx(0.01 - RATE)
    assert score.loss < 0.25


def test_position_equal_to_the_plain_rule_scores_parity() -> None:
    score = score_position((1.0, -1.0), (1.0, -1.0), asset_return=-0.02, rate=RATE, scale=0.01)
    assert score.excess == 0.0
    assert score.loss == pytest.approx(0.25)


def test_return_scale_is_the_recent_std_of_returns() -> None:
    rng = np.random.default_rng(4)
    close = 100 * np.cumprod(1 + rng.normal(0, 0.02, size=2000))
    assert return_scale(close, window=1000) == pytest.approx(0.02, rel=0.1)
    assert return_scale(np.array([100.0])) > 0


def test_shadow_verdict_pairs_bars_and_needs_enough_of_them() -> None:
    active = {t: 0.25 for t in range(10)}
    better = {t: 0.20 for t in range(5, 20)}
    verdict = shadow_verdict(better, active, min_bars=5)
    assert verdict.bars == 5 and verdict.promote
    assert not shadow_verdict(better, active, min_bars=6).promote
    assert not shadow_verdict(active, better, min_bars=1).promote
    assert not shadow_verdict({}, active, min_bars=1).promote


def test_of_several_winners_the_lowest_loss_is_promoted_and_losers_expire() -> None:
    active = {t: 0.25 for t in range(30)}
    verdicts = {
        "v1": shadow_verdict({t: 0.30 for t in range(30)}, active, min_bars=5),  # 30 bars, behind
        "v2": shadow_verdict({t: 0.10 for t in range(10)}, active, min_bars=5),
        "v3": shadow_verdict({t: 0.05 for t in range(20, 30)}, active, min_bars=5),
        "v4": shadow_verdict({t: 0.40 for t in range(10)}, active, min_bars=5),  # behind, young
    }
    assert shadow_outcome(verdicts, max_bars=30) == ("v3", ["v1"])
    assert shadow_outcome(verdicts, max_bars=10) == ("v3", ["v1", "v4"])
    assert shadow_outcome({}, max_bars=10) == (None, [])


def test_compare_with_plain_rule() -> None:
    rng = np.random.default_rng(10)
    returns = rng.normal(0, 0.01, 500)
    mu = rng.normal(0, 0.01, 500)
    p_up = rng.uniform(0.3, 0.7, 500)
    plain = position_from_forecast(mu, p_up)
    same = compare_with_plain_rule(plain, mu, p_up, returns, RATE)
    assert same.sharpe == same.plain_sharpe and not same.beats
    foresight = compare_with_plain_rule(np.sign(returns), mu, p_up, returns, RATE)
    assert foresight.beats and foresight.total_return > foresight.plain_total_return


def test_with_the_test_on_a_lower_mean_is_not_enough_without_significance() -> None:
    """The Diebold–Mariano rule: a candidate slightly ahead on noisy losses
    does not win; one clearly ahead does; 48 bars of a 24-bar horizon are
    about two outcomes, which is not evidence."""
    rng = np.random.default_rng(5)
    noise = {t: float(x) for t, x in enumerate(0.25 + 0.1 * rng.standard_normal(400))}
    jitter = 0.1 * rng.standard_normal(400)
    jitter -= jitter.mean()  # the candidate is ahead by exactly 0.002 on average
    slightly = {t: v - 0.002 + float(jitter[t]) for t, v in noise.items()}
    clearly = {t: v - 0.05 + 0.01 * float(rng.standard_normal()) for t, v in noise.items()}
    assert shadow_verdict(slightly, noise, min_bars=48).promote  # the mean rule alone
    tested = shadow_verdict(slightly, noise, min_bars=48, lags=23, alpha=0.05)
    assert not tested.promote and tested.p_value > 0.05
    strong = shadow_verdict(clearly, noise, min_bars=48, lags=23, alpha=0.05)
    assert strong.promote and strong.statistic > 1.645
    assert "DM" in strong.describe("v1")


def test_a_failing_record_blocks_every_promotion_but_not_expiry() -> None:
    from quantum_daemon.core.promotion import GateResult

    active = {t: 0.25 for t in range(30)}
    verdicts = {
        "v1": shadow_verdict({t: 0.30 for t in range(30)}, active, min_bars=5),
        "v2": shadow_verdict({t: 0.10 for t in range(10)}, active, min_bars=5),
    }
    blocked = GateResult("min_dsr", False, "record deflated Sharpe 0.5")
    assert shadow_outcome(verdicts, max_bars=30, record=blocked) == (None, ["v1"])
    passed = GateResult("min_dsr", True, "record deflated Sharpe 0.99")
    assert shadow_outcome(verdicts, max_bars=30, record=passed) == ("v2", ["v1"])
