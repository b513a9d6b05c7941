"""Is a Sharpe ratio significant? The probabilistic and deflated Sharpe ratios.

All Sharpe ratios here are per period (not annualized): ``SR = mean / std``
(ddof 1), with the sample skewness ``g3`` and the (non-excess) kurtosis ``g4``
of the same ``n`` returns (moment estimators, 3 for a normal distribution).

PSR (Bailey and López de Prado, "The Sharpe Ratio Efficient Frontier",
Journal of Risk 2012), the probability that the true Sharpe exceeds ``SR*``:

    PSR(SR*) = Z[ (SR - SR*) * sqrt(n - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2) ]

DSR (Bailey and López de Prado, "The Deflated Sharpe Ratio", Journal of
Portfolio Management 2014) is PSR against the Sharpe ratio that the best of
``N`` skill-less trials is expected to reach:

    SR0 = sqrt(V) * ((1 - gamma) * Z^-1[1 - 1/N] + gamma * Z^-1[1 - 1/(N e)])

with ``V`` the variance of the trials' Sharpe ratios and ``gamma`` the
Euler-Mascheroni constant; ``SR0 = 0`` for a single trial, where DSR equals
PSR(0). When ``V`` is not known it is taken as the sampling variance of a
Sharpe estimate under the null (true Sharpe 0): ``1 / (n - 1)``.

The functions of the papers are exact (``floor_at_normal=False``). The
evaluator (``psr_of_returns``, ``dsr_of_returns``) floors the moment factor
``1 - g3 * SR + (g4 - 1) / 4 * SR^2`` at its value for normal returns,
``1 + SR^2 / 2``: skewness may widen a Sharpe ratio's error but never make it
look more precise than normal returns would. A strategy that is flat most of
the time and in the market on a few lucky bars has a return series whose
sample skewness is created by the luck itself; the plug-in formula rewards
that skewness (two lucky bars in 1,300 reach PSR 0.97), the floor does not.
With negative skewness or fat tails, the case the papers address, the
numbers are the papers'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

EULER_GAMMA = 0.5772156649015329
SIGNIFICANT = 0.95
_NORMAL = NormalDist()


@dataclass(frozen=True)
class SharpeMoments:
    """The per-period Sharpe ratio of ``n`` returns and their skewness and kurtosis."""

    sharpe: float
    skew: float
    kurtosis: float
    n: int


def sharpe_moments(returns: np.ndarray) -> SharpeMoments:
    n = int(returns.size)
    centered = returns - returns.mean()
    m2 = float(np.mean(centered**2))
    if n < 3 or m2 == 0.0:
        return SharpeMoments(0.0, 0.0, 3.0, n)
    sharpe = float(returns.mean() / np.std(returns, ddof=1))
    skew = float(np.mean(centered**3) / m2**1.5)
    kurtosis = float(np.mean(centered**4) / m2**2)
    return SharpeMoments(sharpe, skew, kurtosis, n)


def sharpe_spread(sharpe: float, skew: float, kurtosis: float, floor_at_normal: bool) -> float:
    """(n - 1) times the variance of a Sharpe estimate: the papers' factor, or
    with ``floor_at_normal`` at least the value for normal returns, 1 + SR^2 / 2."""
    spread = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    return max(spread, 1.0 + sharpe**2 / 2.0) if floor_at_normal else spread


def probabilistic_sharpe_ratio(
    sharpe: float,
    n: int,
    skew: float,
    kurtosis: float,
    benchmark: float = 0.0,
    floor_at_normal: bool = False,
) -> float:
    """PSR: probability that the true per-period Sharpe exceeds ``benchmark``.
    ``floor_at_normal``: see the module docstring (the evaluator sets it)."""
    if n < 2:
        return math.nan
    spread = sharpe_spread(sharpe, skew, kurtosis, floor_at_normal)
    z = (sharpe - benchmark) * math.sqrt(n - 1) / math.sqrt(max(spread, 1e-300))
    return _NORMAL.cdf(z)


def expected_max_sharpe(n_trials: int, trial_sharpe_variance: float) -> float:
    """Expected maximum per-period Sharpe of ``n_trials`` trials without skill."""
    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    if n_trials == 1:
        return 0.0
    spread = (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials) + (
        EULER_GAMMA * _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    )
    return math.sqrt(trial_sharpe_variance) * spread


def deflated_sharpe_ratio(
    sharpe: float,
    n: int,
    skew: float,
    kurtosis: float,
    n_trials: int,
    trial_sharpe_variance: float | None = None,
    floor_at_normal: bool = False,
) -> float:
    """DSR: PSR against the expected maximum Sharpe of ``n_trials`` null trials."""
    if n < 2:
        return math.nan
    variance = 1.0 / (n - 1) if trial_sharpe_variance is None else trial_sharpe_variance
    benchmark = expected_max_sharpe(n_trials, variance)
    return probabilistic_sharpe_ratio(sharpe, n, skew, kurtosis, benchmark, floor_at_normal)


def psr_of_returns(returns: np.ndarray, benchmark: float = 0.0) -> float:
    """The evaluator's PSR of a return series (moment factor floored at normal)."""
    m = sharpe_moments(returns)
    return probabilistic_sharpe_ratio(m.sharpe, m.n, m.skew, m.kurtosis, benchmark, True)


def dsr_of_returns(
    returns: np.ndarray, n_trials: int, trial_sharpe_variance: float | None = None
) -> float:
    """The evaluator's DSR of a return series (moment factor floored at normal)."""
    m = sharpe_moments(returns)
    variance = trial_sharpe_variance
    return deflated_sharpe_ratio(m.sharpe, m.n, m.skew, m.kurtosis, n_trials, variance, True)
