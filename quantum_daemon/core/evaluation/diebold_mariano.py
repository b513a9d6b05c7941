"""Is one forecaster's loss lower than another's? The Diebold–Mariano test.

Diebold and Mariano, "Comparing Predictive Accuracy", Journal of Business
and Economic Statistics 1995. On the bars both versions were scored on, the
loss differential is

    d_t = loss_incumbent_t - loss_challenger_t

(positive where the challenger did better). Under "the challenger is no
better" its mean is at most zero. ``h``-bar-ahead forecasts made every bar
overlap: consecutive outcomes share ``h - 1`` bars, so ``d_t`` is serially
correlated up to lag ``h - 1`` and the plain variance of its mean is too
small. The long-run variance is the Newey–West (HAC) estimate with the
Bartlett kernel,

    S = gamma_0 + 2 * sum_{j=1..L} (1 - j / (L + 1)) * gamma_j,
    gamma_j = (1/n) * sum_{t=j+1..n} (d_t - dbar)(d_{t-j} - dbar),

with ``L = h - 1`` lags (Newey and West 1987; non-negative by construction),
and the statistic

    DM = dbar / sqrt(S / n),

asymptotically standard normal. The test is one-sided: "no better" is
rejected at level ``alpha`` when ``P(Z >= DM) < alpha``. This is what
statsmodels computes for the mean of ``d`` with ``OLS(d, 1).fit(cov_type=
"HAC", cov_kwds={"maxlags": L, "use_correction": False})``
(tests/test_diebold_mariano.py checks it to 1e-9). A differential with no
variance at all is decided by its sign.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()


@dataclass(frozen=True)
class DieboldMariano:
    """The one-sided test of ``d = incumbent - challenger`` losses."""

    n: int
    mean_differential: float  # > 0: the challenger's loss is lower
    long_run_variance: float
    statistic: float
    p_value: float  # P(Z >= statistic): small when the challenger is better
    lags: int

    def rejects(self, alpha: float) -> bool:
        """Whether "the challenger is no better" is rejected at level ``alpha``."""
        return self.n > 0 and self.p_value < alpha


def newey_west_variance(d: np.ndarray, lags: int) -> float:
    """Long-run variance of ``d`` (Bartlett kernel, ``lags`` lags, 1/n autocovariances)."""
    n = d.size
    if n == 0:
        return math.nan
    e = d - d.mean()
    s = float(e @ e) / n
    for j in range(1, min(lags, n - 1) + 1):
        s += 2.0 * (1.0 - j / (lags + 1.0)) * float(e[j:] @ e[:-j]) / n
    return max(s, 0.0)


def diebold_mariano(incumbent: np.ndarray, challenger: np.ndarray, lags: int) -> DieboldMariano:
    """The test on paired losses (same bars, same order)."""
    if incumbent.shape != challenger.shape:
        raise ValueError("the two loss series must pair the same bars")
    if lags < 0:
        raise ValueError("lags must be >= 0")
    d = np.asarray(incumbent, dtype=np.float64) - np.asarray(challenger, dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return DieboldMariano(0, math.nan, math.nan, math.nan, 1.0, lags)
    mean = float(d.mean())
    variance = newey_west_variance(d, lags)
    if variance <= 0.0:  # every differential the same: its sign decides
        statistic = math.copysign(math.inf, mean) if mean != 0.0 else 0.0
    else:
        statistic = mean / math.sqrt(variance / n)
    p_value = 1.0 - _NORMAL.cdf(statistic) if math.isfinite(statistic) else float(statistic < 0)
    return DieboldMariano(n, mean, variance, statistic, p_value, lags)


def paired(
    incumbent: Mapping[int, float], challenger: Mapping[int, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The two loss records on the bars both have, in bar order."""
    common = sorted(set(incumbent) & set(challenger))
    return (
        np.array([incumbent[t] for t in common], dtype=np.float64),
        np.array([challenger[t] for t in common], dtype=np.float64),
    )


def overlap_lags(horizon: int, is_position: bool) -> int:
    """HAC lags for a model's losses: ``horizon - 1`` for forecasts of the
    return over ``horizon`` bars made every bar; 0 for one-bar positions."""
    return 0 if is_position else max(horizon - 1, 0)
