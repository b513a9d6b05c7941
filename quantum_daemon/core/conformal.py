"""Forecast intervals by split conformal prediction on volatility-scaled residuals.

A forecaster says ``mu``, its expected log return over the horizon. On a
calibration window (the validation window: never fitted on) the score of a
decision ``t`` is its residual scaled by the trailing realised volatility
known at ``t``:

    s_t = (y_t - mu_t) / sigma_t,   y_t = log(close[t+h] / close[t])
    sigma_t = std(1-bar log returns of bars t-w+1..t) * sqrt(h)

and the forecast quantile at level ``tau`` of a later decision is
``mu + sigma * Q_tau(s)``. ``Q_tau`` is the split conformal quantile: the
``ceil((n+1) tau)``-th smallest of the ``n`` scores for an upper level and
the ``floor((n+1) tau)``-th for a lower one (the finite-sample correction),
so with exchangeable scores ``P(y <= q_95) >= 0.95`` and ``P(y < q_05) <=
0.05``: the ``[q05, q95]`` interval covers at least 90 %. Scaling by the
trailing volatility makes the interval wide in a volatile regime and narrow
in a quiet one, where one constant width would over-cover the quiet bars and
under-cover the wild ones (``scaled=False``: plain residuals, ``sigma = 1``).

Pure numpy; ``pinball_loss`` and ``interval_coverage`` score quantiles
against outcomes (the walk-forward report, simulate, live scoring).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LEVELS: tuple[float, ...] = (0.05, 0.5, 0.95)
QUANTILE_FIELDS: tuple[str, ...] = ("q05", "q50", "q95")
NOMINAL_COVERAGE = round(LEVELS[-1] - LEVELS[0], 12)  # of the [q05, q95] interval: 0.9
DEFAULT_VOL_WINDOW = 48
MIN_VOL = 1e-9  # a flat stretch of prices must not divide by zero


def trailing_vol(close: np.ndarray, idx: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """Per decision ``t``: the standard deviation of the 1-bar log returns of
    bars ``t-window+1..t`` (fewer at the start of the data, NaN with under
    two), times ``sqrt(horizon)``. Reads no bar after ``t``."""
    close = np.asarray(close, dtype=np.float64)
    idx = np.asarray(idx, dtype=np.int64)
    returns = np.diff(np.log(close), prepend=np.nan)  # returns[t]: bar t-1 -> t
    sums = np.concatenate([[0.0], np.cumsum(np.nan_to_num(returns))])
    squares = np.concatenate([[0.0], np.cumsum(np.nan_to_num(returns) ** 2)])
    start = np.maximum(idx - window + 1, 1)  # returns[0] is undefined
    count = idx + 1 - start
    total = sums[idx + 1] - sums[start]
    total_sq = squares[idx + 1] - squares[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = (total_sq - total**2 / count) / (count - 1)
    vol = np.sqrt(np.maximum(variance, 0.0)) * math.sqrt(horizon)
    vol = np.where(count >= 2, np.maximum(vol, MIN_VOL), np.nan)
    return vol


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split conformal quantile of ``scores`` at ``level`` (see the module
    docstring). With too few scores for the rank (``n < 1/(1-level) - 1``)
    the extreme score stands in: the guarantee then does not hold."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(ordered)
    if n == 0:
        raise ValueError("no calibration scores")
    rank = math.ceil((n + 1) * level) if level >= 0.5 else math.floor((n + 1) * level)
    return float(ordered[min(max(rank, 1), n) - 1])


@dataclass(frozen=True)
class ConformalIntervals:
    """Fitted intervals: a score quantile per level, and how sigma is made."""

    levels: tuple[float, ...]
    score_quantiles: tuple[float, ...]
    n_cal: int
    vol_window: int = DEFAULT_VOL_WINDOW
    scaled: bool = True

    def sigma(self, close: np.ndarray, idx: np.ndarray, horizon: int) -> np.ndarray:
        if not self.scaled:
            return np.ones(len(idx))
        return trailing_vol(close, idx, self.vol_window, horizon)

    def quantiles(self, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Shape ``(len(mu), len(levels))``: ``mu + sigma * Q_tau``."""
        mu = np.asarray(mu, dtype=np.float64)[:, None]
        return mu + np.asarray(sigma, dtype=np.float64)[:, None] * np.array(self.score_quantiles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "score_quantiles": list(self.score_quantiles),
            "n_cal": self.n_cal,
            "vol_window": self.vol_window,
            "scaled": self.scaled,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ConformalIntervals:
        return cls(
            levels=tuple(float(v) for v in raw["levels"]),
            score_quantiles=tuple(float(v) for v in raw["score_quantiles"]),
            n_cal=int(raw["n_cal"]),
            vol_window=int(raw.get("vol_window", DEFAULT_VOL_WINDOW)),
            scaled=bool(raw.get("scaled", True)),
        )


def fit_conformal(
    mu: np.ndarray,
    outcome: np.ndarray,
    sigma: np.ndarray,
    levels: Sequence[float] = LEVELS,
    vol_window: int = DEFAULT_VOL_WINDOW,
    scaled: bool = True,
) -> ConformalIntervals:
    """Calibrate on the decisions where ``mu``, ``outcome`` and ``sigma`` are
    all known (pass ``sigma`` of ones with ``scaled=False``)."""
    mu, outcome, sigma = (np.asarray(a, dtype=np.float64) for a in (mu, outcome, sigma))
    known = np.isfinite(mu) & np.isfinite(outcome) & np.isfinite(sigma) & (sigma > 0)
    scores = (outcome[known] - mu[known]) / sigma[known]
    if scores.size == 0:
        raise ValueError("no calibration decision with a known outcome")
    found = tuple(conformal_quantile(scores, level) for level in levels)
    return ConformalIntervals(tuple(levels), found, int(scores.size), vol_window, scaled)


def pinball_loss(outcome: np.ndarray, quantile: np.ndarray, level: float) -> np.ndarray:
    """Per decision: ``max(level (y - q), (level - 1) (y - q))``; NaN where unknown."""
    diff = np.asarray(outcome, dtype=np.float64) - np.asarray(quantile, dtype=np.float64)
    return np.maximum(level * diff, (level - 1.0) * diff)


def mean_pinball(
    outcome: np.ndarray, quantiles: np.ndarray, levels: Sequence[float] = LEVELS
) -> float:
    """The pinball loss averaged over levels and the decisions with a known
    outcome (``quantiles``: one column per level); NaN with none."""
    losses = np.column_stack(
        [pinball_loss(outcome, quantiles[:, k], lv) for k, lv in enumerate(levels)]
    )
    known = np.all(np.isfinite(losses), axis=1)
    return float(np.mean(losses[known])) if known.any() else float("nan")


def interval_coverage(outcome: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of the decisions with a known outcome that ``[lower, upper]``
    holds; NaN with none."""
    y, lo, hi = (np.asarray(a, dtype=np.float64) for a in (outcome, lower, upper))
    known = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    if not known.any():
        return float("nan")
    return float(np.mean((y[known] >= lo[known]) & (y[known] <= hi[known])))
