"""Engineered features and targets: pure functions of a bar window.

``build_features(bars)`` returns one row per bar; row ``t`` is what is known at
the close of bar ``t`` and is computed from bars ``0..t`` only (causal). Rows
inside an indicator's warm-up are NaN. Indicators with exponential memory
(RSI, MACD, ATR, ADX, the EMA distance) are causal but depend on where the
window starts: the same bar gets the same value only when computed from the
same first bar. Every feature is scale-free (returns, ratios, z-scores,
bounded oscillators) so that trees fitted on one price level apply to
another. The list with a sentence each is ``FEATURES``; docs/evaluation.md
repeats it.

Targets: ``horizon_log_return(close, h)[t] = log(close[t+h] / close[t])``, the
quantity every forecaster predicts at the close of bar ``t``; NaN where
``t + h`` is past the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import pandas as pd
import talib

from quantum_daemon.core import rolling
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.timeframes import DAY_MS, timeframe_ms

RETURN_LAGS = (1, 2, 4, 8, 12, 24, 48, 96)
VOL_WINDOWS = (12, 24, 96)
WEEK_DAYS = 7


@dataclass(frozen=True)
class Feature:
    name: str
    description: str


Columns = dict[str, np.ndarray]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where the denominator is zero or either side is NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.divide(num, den)
    out[~np.isfinite(out)] = np.nan
    return out


def _log_close(bars: Bars) -> np.ndarray:
    return np.log(bars.close)


def _lagged_diff(x: np.ndarray, lag: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    out[lag:] = x[lag:] - x[:-lag]
    return out


# True inside ``pandas_rolling()``: the rolling statistics by pandas, the
# implementation before ``rolling`` (the reference its tests and
# scripts/bench_scale.py compare against).
_PANDAS_ROLLING: ContextVar[bool] = ContextVar("pandas_rolling", default=False)


@contextlib.contextmanager
def pandas_rolling() -> Iterator[None]:
    """Inside this block, ``build_features`` computes its rolling statistics
    with pandas (the reference) instead of ``core.rolling`` (numpy)."""
    token = _PANDAS_ROLLING.set(True)
    try:
        yield
    finally:
        _PANDAS_ROLLING.reset(token)


def _rolling_stat(x: np.ndarray, window: int, stat: str, first_row: int) -> np.ndarray:
    """``stat`` ("mean", "std" with ddof 1, "sum") over each trailing ``window``;
    rows before ``first_row`` may be left NaN."""
    if _PANDAS_ROLLING.get():
        roll = pd.Series(x).rolling(window, min_periods=window)
        return np.asarray(getattr(roll, stat)().to_numpy(), dtype=np.float64)
    return _NUMPY_STATS[stat](x, window, first_row)


_NUMPY_STATS: dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
    "mean": rolling.rolling_mean,
    "std": rolling.rolling_std,
    "sum": rolling.rolling_sum,
}


def _returns(bars: Bars) -> Columns:
    log_close = _log_close(bars)
    return {f"ret_{lag}": _lagged_diff(log_close, lag) for lag in RETURN_LAGS}


def _volatility(bars: Bars, first_row: int) -> Columns:
    one_bar = _lagged_diff(_log_close(bars), 1)
    cols = {f"rvol_{w}": _rolling_stat(one_bar, w, "std", first_row) for w in VOL_WINDOWS}
    cols["rvol_ratio_24_96"] = _ratio(cols["rvol_24"], cols["rvol_96"])
    cols["natr_14"] = talib.NATR(bars.high, bars.low, bars.close, timeperiod=14) / 100.0
    cols["range_log"] = np.log(bars.high / bars.low)
    return cols


def _oscillators(bars: Bars) -> Columns:
    h, lo, c = bars.high, bars.low, bars.close
    return {
        "rsi_14": talib.RSI(c, timeperiod=14) / 100.0 - 0.5,
        "rsi_6": talib.RSI(c, timeperiod=6) / 100.0 - 0.5,
        "mfi_14": talib.MFI(h, lo, c, bars.volume, timeperiod=14) / 100.0 - 0.5,
        "cci_20": talib.CCI(h, lo, c, timeperiod=20) / 100.0,
        "willr_14": talib.WILLR(h, lo, c, timeperiod=14) / 100.0 + 0.5,
    }


def _trend(bars: Bars) -> Columns:
    h, lo, c = bars.high, bars.low, bars.close
    macd, signal, hist = talib.MACD(c, fastperiod=12, slowperiod=26, signalperiod=9)
    plus_di = talib.PLUS_DI(h, lo, c, timeperiod=14)
    minus_di = talib.MINUS_DI(h, lo, c, timeperiod=14)
    return {
        "macd": macd / c,
        "macd_signal": signal / c,
        "macd_hist": hist / c,
        "adx_14": talib.ADX(h, lo, c, timeperiod=14) / 100.0,
        "di_diff_14": (plus_di - minus_di) / 100.0,
        "sma_dist_24": np.log(c / talib.SMA(c, timeperiod=24)),
        "ema_dist_96": np.log(c / talib.EMA(c, timeperiod=96)),
        "high_dist_48": np.log(c / talib.MAX(h, timeperiod=48)),
        "low_dist_48": np.log(c / talib.MIN(lo, timeperiod=48)),
    }


def _bollinger(bars: Bars) -> Columns:
    upper, middle, lower = talib.BBANDS(bars.close, timeperiod=20, nbdevup=2.0, nbdevdn=2.0)
    return {
        "bb_position_20": _ratio(bars.close - lower, upper - lower),
        "bb_width_20": _ratio(upper - lower, middle),
    }


def _volume(bars: Bars, first_row: int) -> Columns:
    log_volume = np.log1p(bars.volume)
    cols: Columns = {}
    for w in (24, 96):
        mean = _rolling_stat(log_volume, w, "mean", first_row)
        std = _rolling_stat(log_volume, w, "std", first_row)
        cols[f"volume_z_{w}"] = _ratio(log_volume - mean, std)
    obv = talib.OBV(bars.close, bars.volume)
    volume_24 = _rolling_stat(bars.volume, 24, "sum", first_row)
    cols["obv_slope_24"] = _ratio(_lagged_diff(obv, 24), volume_24)
    return cols


def _candle(bars: Bars) -> Columns:
    o, h, lo, c = bars.open, bars.high, bars.low, bars.close
    span = h - lo
    return {
        "candle_body": np.nan_to_num(_ratio(c - o, span), nan=0.0),
        "candle_upper_wick": np.nan_to_num(_ratio(h - np.maximum(o, c), span), nan=0.0),
        "candle_lower_wick": np.nan_to_num(_ratio(np.minimum(o, c) - lo, span), nan=0.0),
        "gap_log": np.log(o / np.concatenate([[np.nan], c[:-1]])),
    }


def _calendar(bars: Bars) -> Columns:
    decided_at = bars.ts + timeframe_ms(bars.tf)  # a bar is known at its close
    day_fraction = (decided_at % DAY_MS) / DAY_MS
    weekday = ((decided_at // DAY_MS) + 3) % WEEK_DAYS  # 1970-01-01 was a Thursday
    return {
        "hour_sin": np.sin(2 * np.pi * day_fraction),
        "hour_cos": np.cos(2 * np.pi * day_fraction),
        "dow_sin": np.sin(2 * np.pi * weekday / WEEK_DAYS),
        "dow_cos": np.cos(2 * np.pi * weekday / WEEK_DAYS),
    }


_GROUPS: tuple[Callable[[Bars], Columns], ...] = (
    _returns,
    _oscillators,
    _trend,
    _bollinger,
    _candle,
    _calendar,
)
# Groups of trailing-window statistics: they can skip the rows before a first row.
_ROLLING_GROUPS: tuple[Callable[[Bars, int], Columns], ...] = (_volatility, _volume)

FEATURES: tuple[Feature, ...] = (
    *(
        Feature(f"ret_{k}", f"log return over the last {k} bars: log(c[t] / c[t-{k}])")
        for k in RETURN_LAGS
    ),
    *(
        Feature(
            f"rvol_{w}", f"realized volatility: std (ddof 1) of 1-bar log returns, last {w} bars"
        )
        for w in VOL_WINDOWS
    ),
    Feature("rvol_ratio_24_96", "rvol_24 / rvol_96: volatility regime change"),
    Feature("natr_14", "TA-Lib NATR(14) / 100: average true range as a fraction of the close"),
    Feature("range_log", "log(high / low) of the bar"),
    Feature("rsi_14", "TA-Lib RSI(14) / 100 - 0.5"),
    Feature("rsi_6", "TA-Lib RSI(6) / 100 - 0.5"),
    Feature("mfi_14", "TA-Lib MFI(14) / 100 - 0.5: volume-weighted RSI"),
    Feature("cci_20", "TA-Lib CCI(20) / 100"),
    Feature("willr_14", "TA-Lib WILLR(14) / 100 + 0.5: close within the 14-bar range"),
    Feature("macd", "TA-Lib MACD(12, 26) line / close"),
    Feature("macd_signal", "TA-Lib MACD signal line (9) / close"),
    Feature("macd_hist", "TA-Lib MACD histogram / close"),
    Feature("adx_14", "TA-Lib ADX(14) / 100: trend strength"),
    Feature("di_diff_14", "(TA-Lib PLUS_DI(14) - MINUS_DI(14)) / 100: trend direction"),
    Feature("sma_dist_24", "log(close / SMA(24))"),
    Feature("ema_dist_96", "log(close / EMA(96))"),
    Feature("high_dist_48", "log(close / highest high of the last 48 bars)"),
    Feature("low_dist_48", "log(close / lowest low of the last 48 bars)"),
    Feature("bb_position_20", "(close - lower) / (upper - lower) of BBANDS(20, 2)"),
    Feature("bb_width_20", "Bollinger width: (upper - lower) / middle"),
    Feature("volume_z_24", "z-score of log(1 + volume) against its last 24 bars"),
    Feature("volume_z_96", "z-score of log(1 + volume) against its last 96 bars"),
    Feature("obv_slope_24", "change of TA-Lib OBV over 24 bars / volume of those 24 bars"),
    Feature("candle_body", "(close - open) / (high - low); 0 for a bar without range"),
    Feature("candle_upper_wick", "(high - max(open, close)) / (high - low)"),
    Feature("candle_lower_wick", "(min(open, close) - low) / (high - low)"),
    Feature("gap_log", "log(open / previous close)"),
    Feature("hour_sin", "sin of the time of day of the bar's close (decision time)"),
    Feature("hour_cos", "cos of the time of day of the bar's close"),
    Feature("dow_sin", "sin of the day of week (Monday = 0) of the bar's close"),
    Feature("dow_cos", "cos of the day of week of the bar's close"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


# (bars, matrix) while a ``shared_features`` block runs; see there.
_SHARED: ContextVar[tuple[Bars, np.ndarray] | None] = ContextVar("shared_features", default=None)


@contextlib.contextmanager
def shared_features(bars: Bars, first_row: int = 0) -> Iterator[np.ndarray]:
    """Compute the features of ``bars`` once for a block: inside it,
    ``build_features`` of this very ``bars`` object returns that matrix
    (read-only). The inference worker asks several models about the rows
    from ``first_row`` on (its new bars) of one window."""
    matrix = build_features(bars, first_row)
    matrix.setflags(write=False)
    token = _SHARED.set((bars, matrix))
    try:
        yield matrix
    finally:
        _SHARED.reset(token)


def build_features(bars: Bars, first_row: int = 0) -> np.ndarray:
    """The (len(bars), len(FEATURE_NAMES)) float64 feature matrix; warm-up rows hold NaN.

    With ``first_row``, only the rows from it on are meant to be read: the
    trailing-window columns of earlier rows are left NaN, uncomputed (a live
    request needs its new bars only). The rows computed are bit-identical to
    those of the whole matrix."""
    shared = _SHARED.get()
    if shared is not None and shared[0] is bars:
        return shared[1]
    columns: Columns = {}
    for group in _GROUPS:
        columns.update(group(bars))
    for rolling_group in _ROLLING_GROUPS:
        columns.update(rolling_group(bars, first_row))
    return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in FEATURE_NAMES])


def warmup_bars(matrix: np.ndarray) -> int:
    """Index of the first row without NaN (len(matrix) if there is none)."""
    complete = np.flatnonzero(~np.isnan(matrix).any(axis=1))
    return int(complete[0]) if complete.size else len(matrix)


def horizon_log_return(close: np.ndarray, horizon: int) -> np.ndarray:
    """target[t] = log(close[t + horizon] / close[t]); NaN for the last ``horizon`` bars."""
    out = np.full(close.shape, np.nan)
    out[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    return out


def horizon_sign(target: np.ndarray) -> np.ndarray:
    """1.0 where the horizon return is positive, 0.0 where not, NaN where unknown."""
    return np.where(np.isnan(target), np.nan, (target > 0).astype(np.float64))
