"""Trailing-window statistics in numpy, equal to pandas' ``rolling`` to float error.

``rolling_mean``, ``rolling_std`` (ddof 1) and ``rolling_sum`` of ``x`` over
the last ``window`` values: ``out[t]`` uses ``x[t - window + 1 .. t]``, NaN
for the first ``window - 1`` rows and wherever the window holds a NaN
(pandas' ``min_periods=window``); with ``first_row``, rows before it are
left NaN and cost nothing (the live path needs its newest rows only).

Each window is summed on its own, so a value never depends on the rows
before its window: appending bars leaves earlier rows bit-identical, a
512-bar live window gives the training matrix's values bit for bit, and the
error is that of one window's sum, not of a running sum carried over the
whole series (pandas' add/remove loop drifts by about 1e-12 in a std over
6,000 bars). A window whose values are all equal has std 0 exactly, as in
pandas (a near-zero std would turn a z-score into noise).

Why not pandas: building a ``Series`` and a ``Rolling`` costs tens of
microseconds a call, a third of the feature matrix of a live window (the
inference worker builds one per series and bar). Windows are processed in
blocks of ``BLOCK_ROWS`` so that a training-length series (hundreds of
thousands of bars) never materialises ``len(x) * window`` values at once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

BLOCK_ROWS = 16_384

_Stat = Callable[[np.ndarray], np.ndarray]  # (rows, window) windows -> (rows,) values


def _windowed(x: np.ndarray, window: int, stat: _Stat, first_row: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    out = np.full(x.shape, np.nan)
    skip = max(0, first_row - (window - 1))  # windows ending before ``first_row``
    rows = len(x) - skip - window + 1
    step = x.strides[0]
    for start in range(0, max(rows, 0), BLOCK_ROWS):
        n = min(BLOCK_ROWS, rows - start)
        view = as_strided(x[skip + start :], shape=(n, window), strides=(step, step))
        # A contiguous copy: numpy then sums each row on its own (pairwise,
        # in the same order whatever the number of rows); reducing the
        # strided view may run across rows, and a value would depend on
        # how many windows were computed with it.
        at = skip + start + window - 1
        out[at : at + n] = stat(view.copy())
    return out


def _mean(block: np.ndarray) -> np.ndarray:
    return block.sum(axis=1) / block.shape[1]


def _sum(block: np.ndarray) -> np.ndarray:
    return block.sum(axis=1)


def _std(block: np.ndarray) -> np.ndarray:
    """Two passes, the operations of ``ndarray.std(axis=1, ddof=1)``."""
    deviation = block - _mean(block)[:, None]
    std = np.sqrt((deviation * deviation).sum(axis=1) / (block.shape[1] - 1))
    std[(block == block[:, :1]).all(axis=1)] = 0.0  # NaN windows compare False, stay NaN
    return std


def _all_nan(block: np.ndarray) -> np.ndarray:
    return np.full(len(block), np.nan)  # ddof 1 of one value is undefined (pandas: NaN)


def rolling_mean(x: np.ndarray, window: int, first_row: int = 0) -> np.ndarray:
    return _windowed(x, window, _mean, first_row)


def rolling_sum(x: np.ndarray, window: int, first_row: int = 0) -> np.ndarray:
    return _windowed(x, window, _sum, first_row)


def rolling_std(x: np.ndarray, window: int, first_row: int = 0) -> np.ndarray:
    """Sample standard deviation (ddof 1) of each trailing window."""
    return _windowed(x, window, _std if window > 1 else _all_nan, first_row)
