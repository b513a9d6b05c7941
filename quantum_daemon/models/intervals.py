"""Forecast intervals for any family, calibrated on its validation window.

``fit_intervals`` fits ``core.conformal`` intervals on the inner family's
``mu`` over the validation decisions (whose outcomes the splitter keeps
inside fitting's bars, so no test bar is read); ``with_quantiles`` adds
``q05``/``q50``/``q95`` to a forecast, each decision scaled by the trailing
volatility known at its close. ``models.calibrated`` calls both, so every
family the daemon trains has them; the fitted numbers live in the version's
metadata (``INTERVALS_KEY``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from quantum_daemon.core.conformal import (
    DEFAULT_VOL_WINDOW,
    LEVELS,
    QUANTILE_FIELDS,
    ConformalIntervals,
    fit_conformal,
    trailing_vol,
)
from quantum_daemon.core.features import horizon_log_return
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.forecasting import Forecast

INTERVALS_KEY = "intervals"
MIN_CALIBRATION = 20  # below it the 0.05 / 0.95 ranks are the extreme scores


def fit_intervals(
    bars: Bars, val_idx: np.ndarray, horizon: int, mu: np.ndarray
) -> ConformalIntervals | None:
    """Intervals from ``mu`` at the validation decisions ``val_idx``; None
    with fewer than ``MIN_CALIBRATION`` decisions of known outcome."""
    idx = np.asarray(val_idx, dtype=np.int64)
    if idx.size == 0:
        return None
    outcome = horizon_log_return(bars.close, horizon)[idx]
    sigma = trailing_vol(bars.close, idx, DEFAULT_VOL_WINDOW, horizon)
    known = np.isfinite(outcome) & np.isfinite(sigma) & np.isfinite(mu)
    if int(known.sum()) < MIN_CALIBRATION:
        return None
    return fit_conformal(mu, outcome, sigma, LEVELS, DEFAULT_VOL_WINDOW)


def with_quantiles(
    forecast: Forecast,
    intervals: ConformalIntervals | None,
    bars: Bars,
    idx: np.ndarray,
    horizon: int,
) -> Forecast:
    """``forecast`` with its quantiles (unchanged without intervals)."""
    if intervals is None:
        return forecast
    idx = np.asarray(idx, dtype=np.int64)
    sigma = intervals.sigma(bars.close, idx, horizon)
    q = intervals.quantiles(np.asarray(forecast.mu, dtype=np.float64), sigma)
    by_level = dict(zip(intervals.levels, q.T, strict=True))
    return dataclasses.replace(
        forecast, **{name: by_level[lv] for name, lv in zip(QUANTILE_FIELDS, LEVELS, strict=True)}
    )


def intervals_metadata(intervals: ConformalIntervals | None, horizon: int) -> dict[str, Any]:
    if intervals is None:
        return {"horizon": horizon}
    return {"horizon": horizon, **intervals.to_dict()}


def intervals_from_metadata(
    stored: dict[str, Any] | None,
) -> tuple[ConformalIntervals | None, int | None]:
    """(intervals, horizon) from ``intervals_metadata``'s dict; a version
    saved before intervals existed has neither."""
    if not stored:
        return None, None
    horizon = stored.get("horizon")
    if "score_quantiles" not in stored:
        return None, horizon
    return ConformalIntervals.from_dict(stored), horizon
