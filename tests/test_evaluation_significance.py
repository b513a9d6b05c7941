"""PSR, DSR and the expected maximum Sharpe: the papers' worked example,
an independent implementation, and calibration under the null."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from quantum_daemon.core.evaluation.significance import (
    EULER_GAMMA,
    deflated_sharpe_ratio,
    dsr_of_returns,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    psr_of_returns,
    sharpe_moments,
)


def test_deflated_sharpe_ratio_matches_the_papers_numerical_example() -> None:
    """Bailey and López de Prado, "The Deflated Sharpe Ratio" (JPM 2014),
    section "A numerical example": N = 100 trials, T = 1250 daily returns,
    annualized SR 2.5 and variance of the trials' annualized Sharpe ratios 1/2
    (250 days a year), skewness -3, kurtosis 10. The paper reports
    E[max SR] ~= 0.1132 (per day) and DSR ~= 0.9004 (both to 4 decimals)."""
    days = 250
    variance = 0.5 / days
    benchmark = expected_max_sharpe(100, variance)
    dsr = deflated_sharpe_ratio(2.5 / math.sqrt(days), 1250, -3.0, 10.0, 100, variance)
    assert benchmark == pytest.approx(0.1132, abs=5e-5)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def _psr_by_hand(sr: float, sr_star: float, n: int, g3: float, g4: float) -> float:
    """PSR written out from eq. (11) of "The Sharpe Ratio Efficient Frontier"
    (Journal of Risk 2012) with scipy's normal CDF: an independent check."""
    sigma = math.sqrt((1 - g3 * sr + (g4 - 1) / 4 * sr * sr) / (n - 1))
    return float(scipy.stats.norm.cdf((sr - sr_star) / sigma))


@pytest.mark.parametrize(
    ("sr", "sr_star", "n", "g3", "g4"),
    [
        (0.1, 0.0, 60, -0.5, 5.0),
        (0.05, 0.02, 1000, -2.45, 10.16),
        (-0.03, 0.0, 500, 0.3, 3.2),
        (0.2, 0.1, 24, 0.0, 3.0),
    ],
)
def test_psr_equals_the_papers_formula_computed_independently(
    sr: float, sr_star: float, n: int, g3: float, g4: float
) -> None:
    got = probabilistic_sharpe_ratio(sr, n, g3, g4, sr_star)
    assert got == pytest.approx(_psr_by_hand(sr, sr_star, n, g3, g4), rel=1e-12)


def test_psr_with_normal_moments_is_lo_2002() -> None:
    """With skew 0 and kurtosis 3 the standard error is Lo's sqrt((1 + SR^2 / 2) / (n - 1))."""
    sr, n = 0.08, 400
    expected = scipy.stats.norm.cdf(sr * math.sqrt(n - 1) / math.sqrt(1 + sr**2 / 2))
    assert probabilistic_sharpe_ratio(sr, n, 0.0, 3.0) == pytest.approx(expected, rel=1e-12)


def test_expected_max_sharpe_formula_and_single_trial() -> None:
    n, v = 20, 0.004
    by_hand = math.sqrt(v) * (
        (1 - EULER_GAMMA) * scipy.stats.norm.ppf(1 - 1 / n)
        + EULER_GAMMA * scipy.stats.norm.ppf(1 - 1 / (n * math.e))
    )
    assert expected_max_sharpe(n, v) == pytest.approx(by_hand, rel=1e-12)
    assert expected_max_sharpe(1, v) == 0.0
    assert expected_max_sharpe(1000, v) > expected_max_sharpe(100, v) > expected_max_sharpe(10, v)


def test_dsr_of_one_trial_is_psr_against_zero_and_more_trials_deflate() -> None:
    rng = np.random.default_rng(3)
    returns = 0.0004 + 0.01 * rng.standard_normal(2000)
    m = sharpe_moments(returns)
    psr0 = probabilistic_sharpe_ratio(m.sharpe, m.n, m.skew, m.kurtosis, 0.0)
    assert deflated_sharpe_ratio(m.sharpe, m.n, m.skew, m.kurtosis, 1) == psr0
    dsrs = [dsr_of_returns(returns, n) for n in (1, 10, 100, 1000)]
    assert dsrs == sorted(dsrs, reverse=True) and dsrs[0] > dsrs[-1] + 0.1


def test_sample_moments_match_scipy() -> None:
    returns = np.random.default_rng(5).standard_t(4, size=3000) * 0.01 + 0.0002
    m = sharpe_moments(returns)
    assert m.sharpe == pytest.approx(returns.mean() / returns.std(ddof=1), rel=1e-12)
    assert m.skew == pytest.approx(scipy.stats.skew(returns), rel=1e-9)
    assert m.kurtosis == pytest.approx(scipy.stats.kurtosis(returns, fisher=True) + 3, rel=1e-9)
    assert m.n == 3000


def test_evaluator_floor_leaves_negative_skew_alone_and_stops_lucky_sparse_series() -> None:
    """The evaluator's PSR equals the paper's for a negatively skewed series; a
    series flat but for two lucky bars is not significant, while the plug-in is."""
    rng = np.random.default_rng(11)
    crashy = 0.001 + 0.01 * rng.standard_normal(1500) - 0.05 * (rng.random(1500) < 0.01)
    m = sharpe_moments(crashy)
    assert m.skew < 0
    assert psr_of_returns(crashy) == probabilistic_sharpe_ratio(m.sharpe, m.n, m.skew, m.kurtosis)
    sparse = np.zeros(1314)
    sparse[[19, 20, 21]] = [0.01236, 0.0014, -0.0012]
    s = sharpe_moments(sparse)
    assert probabilistic_sharpe_ratio(s.sharpe, s.n, s.skew, s.kurtosis) > 0.95
    assert psr_of_returns(sparse) < 0.9


def test_psr_is_calibrated_under_the_null() -> None:
    """On zero-mean iid returns, PSR(0) > 0.95 happens about 5% of the time."""
    rng = np.random.default_rng(2024)
    samples = rng.standard_t(5, size=(2000, 500)) * 0.01
    significant = np.mean([psr_of_returns(s) > 0.95 for s in samples])
    assert 0.03 < significant < 0.07  # binomial sd ~0.005 around 0.05
