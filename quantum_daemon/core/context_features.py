"""Context features: what other series and coarser bars say at the close of a bar.

Two groups, both pure and causal functions of bars (docs/features.md):

- reference-symbol features: log returns, volatility and co-movement of a
  reference symbol (``BTCUSDT`` by default) aligned on close time. Row ``t``
  of the target uses the reference bar that closed at the same instant as
  target bar ``t`` (same timeframe, same open time); a reference bar that is
  missing gives NaN, never a neighbour's value, so no row can see a reference
  bar that closed after it.
- coarse-timeframe features (``4h``, ``1d``): coarse bars aggregated from the
  series' own bars. A coarse bucket is used by row ``t`` only when it ended
  at or before the close of bar ``t`` and holds every one of its fine bars;
  an incomplete bucket (a gap, or the window's first partial day) is NaN.

Every column is scale-free, and none has exponential memory: the same bar
gets the same value from any window that holds the bars its longest look-back
needs, which is what lets the inference worker's short window reproduce the
training rows. ``ContextSpec`` says which groups a model uses; its
``feature_names`` are the column order of ``context_matrix``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import FeaturesConfig
from quantum_daemon.domain.ids import model_id
from quantum_daemon.domain.timeframes import timeframe_ms

REFERENCE_LAGS = (1, 4, 24)
REFERENCE_VOL_WINDOW = 24
REFERENCE_CORR_WINDOW = 96
RELATIVE_LAG = 24
COARSE_LAGS = (1, 4)
COARSE_VOL_WINDOW = 12
COARSE_RANGE_WINDOW = 6

Columns = dict[str, np.ndarray]


class ContextMissing(ValueError):
    """A model fitted with context features was asked without the bars they need."""


@dataclass(frozen=True)
class ContextSpec:
    """Which context features a model uses: its reference symbols and coarse timeframes."""

    reference_symbols: tuple[str, ...] = ()
    coarse_timeframes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.reference_symbols and not self.coarse_timeframes

    def for_series(self, symbol: str, tf: str) -> ContextSpec:
        """What applies to a model of ``symbol`` on ``tf``: no reference
        features of the symbol itself, only coarse timeframes that are a
        whole multiple (> 1) of ``tf``."""
        fine = timeframe_ms(tf)
        coarse = tuple(
            c
            for c in self.coarse_timeframes
            if timeframe_ms(c) > fine and timeframe_ms(c) % fine == 0
        )
        refs = tuple(s for s in self.reference_symbols if s != symbol)
        return ContextSpec(_unique(refs), _unique(coarse))

    def feature_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for symbol in self.reference_symbols:
            names += [f"ref_{symbol}_{suffix}" for suffix in _REFERENCE_SUFFIXES]
        for tf in self.coarse_timeframes:
            names += [f"tf{tf}_{suffix}" for suffix in _COARSE_SUFFIXES]
        return tuple(names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_symbols": list(self.reference_symbols),
            "coarse_timeframes": list(self.coarse_timeframes),
            "features": list(self.feature_names()),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ContextSpec:
        return cls(tuple(raw.get("reference_symbols", ())), tuple(raw.get("coarse_timeframes", ())))


@dataclass(frozen=True)
class FeatureContext:
    """What a family fitted (or asked) with context features is given: the
    spec and the reference symbols' bars (same timeframe as the target)."""

    spec: ContextSpec
    reference: Mapping[str, Bars] = field(default_factory=dict)


def _unique(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


_REFERENCE_SUFFIXES = (
    *(f"ret_{k}" for k in REFERENCE_LAGS),
    f"rvol_{REFERENCE_VOL_WINDOW}",
    f"rel_ret_{RELATIVE_LAG}",
    f"corr_{REFERENCE_CORR_WINDOW}",
    "missing",
)
_COARSE_SUFFIXES = (
    *(f"ret_{k}" for k in COARSE_LAGS),
    f"rvol_{COARSE_VOL_WINDOW}",
    f"range_pos_{COARSE_RANGE_WINDOW}",
    "since_close",
)


def context_matrix(bars: Bars, spec: ContextSpec, reference: Mapping[str, Bars]) -> np.ndarray:
    """The (len(bars), len(spec.feature_names())) float64 matrix; NaN where unknown.

    Raises ``ContextMissing`` when a reference symbol of ``spec`` has no bars in
    ``reference`` at all."""
    columns: Columns = {}
    for symbol in spec.reference_symbols:
        ref = reference.get(symbol)
        if ref is None or len(ref) == 0:
            raise ContextMissing(
                f"needs reference bars of {symbol} {bars.tf} (context features); none given"
            )
        columns.update(reference_features(bars, ref, f"ref_{symbol}_"))
    for tf in spec.coarse_timeframes:
        columns.update(coarse_features(bars, tf, f"tf{tf}_"))
    names = spec.feature_names()
    if not names:
        return np.zeros((len(bars), 0))
    return np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in names])


# -- reference symbols ---------------------------------------------------------------------


def aligned_close(bars: Bars, ref: Bars) -> np.ndarray:
    """Per target bar, the close of the reference bar that closed at the same
    time (NaN where the reference has no such bar)."""
    if ref.tf != bars.tf:
        raise ValueError(f"reference {ref.symbol} is {ref.tf}, the target is {bars.tf}")
    out = np.full(len(bars), np.nan)
    if len(ref) == 0 or len(bars) == 0:
        return out
    pos = np.searchsorted(ref.ts, bars.ts)
    inside = pos < len(ref)
    hit = np.zeros(len(bars), dtype=bool)
    hit[inside] = ref.ts[pos[inside]] == bars.ts[inside]
    out[hit] = ref.close[pos[hit]]
    return out


def reference_features(bars: Bars, ref: Bars, prefix: str) -> Columns:
    ref_log = np.log(aligned_close(bars, ref))
    own_log = np.log(bars.close)
    ref_one, own_one = _lagged_diff(ref_log, 1), _lagged_diff(own_log, 1)
    cols = {f"{prefix}ret_{k}": _lagged_diff(ref_log, k) for k in REFERENCE_LAGS}
    cols[f"{prefix}rvol_{REFERENCE_VOL_WINDOW}"] = _rolling_std(ref_one, REFERENCE_VOL_WINDOW)
    cols[f"{prefix}rel_ret_{RELATIVE_LAG}"] = _lagged_diff(own_log, RELATIVE_LAG) - _lagged_diff(
        ref_log, RELATIVE_LAG
    )
    cols[f"{prefix}corr_{REFERENCE_CORR_WINDOW}"] = _rolling_corr(
        own_one, ref_one, REFERENCE_CORR_WINDOW
    )
    # trees route NaN natively; this says outright that the bar itself is absent
    cols[f"{prefix}missing"] = np.isnan(ref_log).astype(np.float64)
    return cols


# -- coarse timeframes ---------------------------------------------------------------------


@dataclass(frozen=True)
class CoarseBars:
    """Coarse bars on a regular grid of buckets from ``first_bucket`` on;
    prices are NaN for a bucket that misses any of its fine bars."""

    first_bucket: int  # bucket number (open time // coarse length) of row 0
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray


def coarse_bars(bars: Bars, coarse_tf: str) -> CoarseBars:
    """Aggregate ``bars`` into ``coarse_tf`` buckets (UTC grid: 4h from
    00:00, 1d at midnight); only complete buckets get prices."""
    fine, coarse = timeframe_ms(bars.tf), timeframe_ms(coarse_tf)
    if coarse <= fine or coarse % fine:
        raise ValueError(f"{coarse_tf} is not a whole multiple of {bars.tf}")
    buckets = bars.ts // coarse
    if len(bars) == 0:
        empty = np.zeros(0)
        return CoarseBars(0, empty, empty, empty)
    first = int(buckets[0])
    size = int(buckets[-1]) - first + 1
    starts = np.flatnonzero(np.r_[True, np.diff(buckets) != 0])
    counts = np.diff(np.r_[starts, len(bars)])
    at = buckets[starts] - first
    complete = counts == coarse // fine
    grid = {k: np.full(size, np.nan) for k in ("high", "low", "close")}
    ends = np.r_[starts[1:], len(bars)] - 1
    grid["high"][at] = np.where(complete, np.maximum.reduceat(bars.high, starts), np.nan)
    grid["low"][at] = np.where(complete, np.minimum.reduceat(bars.low, starts), np.nan)
    grid["close"][at] = np.where(complete, bars.close[ends], np.nan)
    return CoarseBars(first, grid["high"], grid["low"], grid["close"])


def coarse_features(bars: Bars, coarse_tf: str, prefix: str) -> Columns:
    """Features of the last coarse bar that closed at or before each row's close."""
    agg = coarse_bars(bars, coarse_tf)
    log_close = np.log(agg.close)
    one = _lagged_diff(log_close, 1)
    on_grid: Columns = {f"ret_{k}": _lagged_diff(log_close, k) for k in COARSE_LAGS}
    on_grid[f"rvol_{COARSE_VOL_WINDOW}"] = _rolling_std(one, COARSE_VOL_WINDOW)
    high = _rolling(agg.high, COARSE_RANGE_WINDOW).max().to_numpy()
    low = _rolling(agg.low, COARSE_RANGE_WINDOW).min().to_numpy()
    # the last closed coarse bar of each row: it ended at or before the row's close
    closes = bars.ts + timeframe_ms(bars.tf)
    row = closes // timeframe_ms(coarse_tf) - 1 - agg.first_bucket
    usable = row >= 0
    cols: Columns = {f"{prefix}{k}": _take(v, row, usable) for k, v in on_grid.items()}
    lo, hi = _take(low, row, usable), _take(high, row, usable)
    cols[f"{prefix}range_pos_{COARSE_RANGE_WINDOW}"] = _ratio(bars.close - lo, hi - lo)
    cols[f"{prefix}since_close"] = np.log(bars.close) - _take(log_close, row, usable)
    return cols


# -- small helpers -------------------------------------------------------------------------


def empty_bars(symbol: str, tf: str) -> Bars:
    none = np.zeros(0)
    return Bars(symbol, tf, np.zeros(0, dtype=np.int64), none, none, none, none, none)


def reference_window(ref: Bars, bars: Bars) -> Bars:
    """The reference bars that can align with ``bars`` (open times within theirs)."""
    if len(bars) == 0:
        return ref.slice(0, 0)
    lo = int(np.searchsorted(ref.ts, bars.ts[0], side="left"))
    hi = int(np.searchsorted(ref.ts, bars.ts[-1], side="right"))
    return ref.slice(lo, hi)


def feature_context(
    features: FeaturesConfig,
    family: str,
    bars: Bars,
    read_reference: Callable[[str, Bars], Bars],
) -> FeatureContext | None:
    """The context of a ``family`` model of ``bars``' series under
    ``[features]`` (None: off, or nothing applies to it);
    ``read_reference(symbol, bars)`` gives that symbol's bars of the same
    timeframe over ``bars``' span."""
    if not features.applies_to(family, model_id(family, bars.symbol, bars.tf)):
        return None
    spec = ContextSpec(features.reference_symbols, features.coarse_timeframes)
    narrowed = spec.for_series(bars.symbol, bars.tf)
    if narrowed.empty:
        return None
    reference = {s: read_reference(s, bars) for s in narrowed.reference_symbols}
    return FeatureContext(narrowed, reference)


def _take(values: np.ndarray, row: np.ndarray, usable: np.ndarray) -> np.ndarray:
    out = np.full(row.shape, np.nan)
    out[usable] = values[row[usable]]
    return out


def _lagged_diff(x: np.ndarray, lag: int) -> np.ndarray:
    out = np.full(x.shape, np.nan)
    if lag < len(x):
        out[lag:] = x[lag:] - x[:-lag]
    return out


def _rolling(x: np.ndarray, window: int) -> Any:
    return pd.Series(x).rolling(window, min_periods=window)


def _rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    return np.asarray(_rolling(x, window).std().to_numpy(), dtype=np.float64)


def _rolling_corr(x: np.ndarray, y: np.ndarray, window: int) -> np.ndarray:
    out = np.array(_rolling(x, window).corr(pd.Series(y)).to_numpy(), dtype=np.float64)
    # a window with any missing bar is unknown (pandas would pair what is left)
    gaps = _rolling(np.isnan(x) | np.isnan(y), window).sum().to_numpy() > 0
    out[gaps | ~np.isfinite(out)] = np.nan
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.divide(num, den)
    out[~np.isfinite(out)] = np.nan
    return out
