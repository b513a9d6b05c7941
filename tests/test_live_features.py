"""The numpy rolling statistics (``core.rolling``) behind the feature matrix:
equal to the pandas features they replaced on real bars, exact where pandas
drifts, and the same in a live 513-bar window as in the training matrix."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantum_daemon.core import rolling
from quantum_daemon.core.features import FEATURE_NAMES, build_features, pandas_rolling
from quantum_daemon.domain.bars import Bars
from quantum_daemon.storage.bar_files import read_bar_file

MARKET = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"
REAL_FILES = sorted(MARKET.glob("*.feather"))
LIVE_WINDOW = 513  # the worker's context (512 bars) and the new bar
WINDOWS_PER_FILE = 12
# Columns computed by ``core.rolling``: a trailing window, nothing before it.
ROLLING_COLUMNS = ("rvol_12", "rvol_24", "rvol_96", "rvol_ratio_24_96", "volume_z_24",
                   "volume_z_96")  # fmt: skip
# TA-Lib's EMA-style memory reaches back past the live context (module doc of features).
WINDOW_START_DEPENDENT = ("ema_dist_96",)
# TA-Lib's BBANDS keeps running sums of x and x**2 over the whole series: its
# error grows with the series (1.9e-12 after 71,000 5m bars), kept as it was.
RUNNING_SUMS = ("bb_position_20", "bb_width_20")

pytestmark = pytest.mark.skipif(not REAL_FILES, reason="no real bars in shared/data/market")


@cache
def real_bars(path: Path) -> Bars:
    bar_file = read_bar_file(path)
    return Bars.from_frame(bar_file.frame, bar_file.symbol, bar_file.tf)


def live_window_ends(bars: Bars) -> list[int]:
    """Evenly spread last bars of live windows (index of the newest bar)."""
    return [int(i) for i in np.linspace(LIVE_WINDOW + 100, len(bars) - 1, WINDOWS_PER_FILE)]


def live_window(bars: Bars, end: int) -> Bars:
    return bars.slice(end - LIVE_WINDOW + 1, end + 1)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.stem)
def test_every_column_matches_the_pandas_features_on_real_live_windows(path: Path) -> None:
    bars = real_bars(path)
    for end in live_window_ends(bars):
        window = live_window(bars, end)
        new = build_features(window)
        with pandas_rolling():
            old = build_features(window)
        for k, name in enumerate(FEATURE_NAMES):
            np.testing.assert_allclose(
                new[:, k], old[:, k], rtol=1e-12, atol=1e-12, err_msg=f"{path.stem} {name}"
            )


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.stem)
def test_a_live_window_gives_the_training_rows(path: Path) -> None:
    """The newest row of a live window against the same bar's row in the
    matrix of the whole history (what training fits on): the rolling
    columns bit-identical, the others to 1e-12 (BBANDS' running sums to 1e-10)
    but for the EMA column, whose memory is longer than the window."""
    bars = real_bars(path)
    training = build_features(bars)
    for end in live_window_ends(bars):
        live = build_features(live_window(bars, end))[-1]
        for k, name in enumerate(FEATURE_NAMES):
            if name in ROLLING_COLUMNS:
                assert live[k] == training[end, k], f"{path.stem} {name} at {end}"
            elif name not in WINDOW_START_DEPENDENT:
                tol = 1e-10 if name in RUNNING_SUMS else 1e-12
                np.testing.assert_allclose(
                    live[k], training[end, k], rtol=tol, atol=tol, err_msg=f"{name} at {end}"
                )


def exact_window_stats(x: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std of each trailing window from correctly rounded sums."""
    mean, std = np.full(len(x), np.nan), np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        values = x[t - window + 1 : t + 1].tolist()
        m = math.fsum(values) / window
        mean[t] = m
        std[t] = math.sqrt(math.fsum((v - m) ** 2 for v in values) / (window - 1))
    return mean, std


def test_rolling_statistics_are_exact_over_a_whole_real_history() -> None:
    """Over 6,000 bars pandas' running sums drift (about 1e-12 in a std);
    each numpy window is its own sum, correct to a few units in the last place."""
    x = np.log1p(real_bars(REAL_FILES[0]).volume)
    for window in (24, 96):
        mean, std = exact_window_stats(x, window)
        np.testing.assert_allclose(rolling.rolling_mean(x, window), mean, rtol=1e-14)
        np.testing.assert_allclose(rolling.rolling_std(x, window), std, rtol=1e-14)
        np.testing.assert_allclose(rolling.rolling_sum(x, window), mean * window, rtol=1e-14)


@pytest.mark.parametrize("window", [1, 2, 5, 24])
def test_nan_warmup_and_constant_windows_as_in_pandas(window: int) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    x[[0, 50, 51, 120]] = np.nan
    x[140:170] = 2.5  # a flat stretch: std exactly 0 in pandas
    for stat in ("mean", "std", "sum"):
        ours = getattr(rolling, f"rolling_{stat}")(x, window)
        theirs = getattr(pd.Series(x).rolling(window, min_periods=window), stat)().to_numpy()
        assert (np.isnan(ours) == np.isnan(theirs)).all(), stat
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12, err_msg=stat)
    flat = rolling.rolling_std(x, window)[140 + window - 1 : 170]
    assert window == 1 or (flat == 0.0).all()


def test_short_series_and_bad_window() -> None:
    assert np.isnan(rolling.rolling_std(np.arange(5.0), 24)).all()
    with pytest.raises(ValueError, match="window"):
        rolling.rolling_mean(np.arange(5.0), 0)


def test_blocks_join_without_a_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of windows (bounded memory on long histories) give the values
    of one pass."""
    x = np.random.default_rng(5).normal(size=1000)
    whole = rolling.rolling_std(x, 24)
    monkeypatch.setattr(rolling, "BLOCK_ROWS", 7)
    assert np.array_equal(rolling.rolling_std(x, 24), whole, equal_nan=True)


@pytest.mark.parametrize("first_row", [0, 1, 95, 500, 512])
def test_first_row_skips_earlier_rows_and_changes_none_after(first_row: int) -> None:
    """The live worker asks for its new bars' rows only: those rows equal the
    whole matrix's bit for bit; the rolling columns before them are NaN."""
    window = live_window(real_bars(REAL_FILES[0]), 3000)
    whole = build_features(window)
    part = build_features(window, first_row)
    assert np.array_equal(part[first_row:], whole[first_row:], equal_nan=True)
    rolled = [FEATURE_NAMES.index(n) for n in ROLLING_COLUMNS]
    assert np.isnan(part[:first_row][:, rolled]).all()
