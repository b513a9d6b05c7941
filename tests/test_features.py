"""Features: at least 30, documented, causal, scale-free; targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantum_daemon.core.features import (
    FEATURE_NAMES,
    FEATURES,
    build_features,
    horizon_log_return,
    horizon_sign,
    warmup_bars,
)
from quantum_daemon.domain.bars import Bars
from tests.conftest import make_bars

DOCS = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
PRICE_ONLY = [n for n in FEATURE_NAMES if not n.startswith(("volume_z", "obv", "mfi"))]


def _with_future(bars: Bars, future: Bars) -> Bars:
    """``bars`` followed by ``future``'s bars, re-based to continue the price."""
    scale = bars.close[-1] / future.open[0]
    step = bars.ts[1] - bars.ts[0]
    ts = bars.ts[-1] + step * (1 + np.arange(len(future)))
    parts = [
        (getattr(bars, k), getattr(future, k) * (scale if k != "volume" else 1.0))
        for k in ("open", "high", "low", "close", "volume")
    ]
    return Bars(
        bars.symbol, bars.tf, np.concatenate([bars.ts, ts]), *(np.concatenate(p) for p in parts)
    )


def test_at_least_30_named_and_documented_features() -> None:
    assert len(FEATURES) >= 30
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert all(f.description for f in FEATURES)
    documented = DOCS.read_text()
    assert [n for n in FEATURE_NAMES if f"`{n}`" not in documented] == []


def test_matrix_shape_and_warmup() -> None:
    bars = make_bars(600, seed=1)
    x = build_features(bars)
    assert x.shape == (600, len(FEATURE_NAMES)) and x.dtype == np.float64
    start = warmup_bars(x)
    assert 0 < start <= 100  # the longest window (96 bars) plus a little
    assert np.isfinite(x[start:]).all()


@pytest.mark.parametrize(("n", "k"), [(300, 1), (500, 37), (1000, 500)])
def test_appending_future_bars_never_changes_earlier_rows(n: int, k: int) -> None:
    """Rows of bars[:n] are bit-identical whatever follows them: two different
    futures, and none. Warm-up rows are NaN in all three."""
    bars = make_bars(n, seed=4)
    alone = build_features(bars)
    calm = build_features(_with_future(bars, make_bars(k, seed=5, vol=0.001)))
    wild = build_features(_with_future(bars, make_bars(k, seed=6, vol=0.2)))
    np.testing.assert_array_equal(calm[:n], alone)
    np.testing.assert_array_equal(wild[:n], alone)


def test_features_are_scale_free() -> None:
    """Prices times 1,000 (another quote currency) give the same features."""
    bars = make_bars(800, seed=2)
    scaled = Bars(
        bars.symbol,
        bars.tf,
        bars.ts,
        bars.open * 1e3,
        bars.high * 1e3,
        bars.low * 1e3,
        bars.close * 1e3,
        bars.volume,
    )
    x, y = build_features(bars), build_features(scaled)
    cols = [FEATURE_NAMES.index(n) for n in PRICE_ONLY]
    np.testing.assert_allclose(y[:, cols], x[:, cols], rtol=1e-7, atol=1e-9)


def test_calendar_features_use_the_bars_close_time() -> None:
    """The 1h bar opening Sunday 2023-12-31 23:00 UTC closes Monday 00:00."""
    bars = make_bars(2, start_ms=1_704_063_600_000)
    row = build_features(bars)[0]
    value = dict(zip(FEATURE_NAMES, row, strict=True))
    assert value["hour_sin"] == pytest.approx(0.0) and value["hour_cos"] == pytest.approx(1.0)
    assert value["dow_sin"] == pytest.approx(0.0) and value["dow_cos"] == pytest.approx(1.0)


def test_zero_volume_and_flat_bars_give_no_infinities() -> None:
    bars = make_bars(300, seed=3)
    volume = bars.volume.copy()
    volume[100:150] = 0.0
    flat = bars.close.copy()
    weird = Bars(bars.symbol, bars.tf, bars.ts, flat, flat, flat, flat, volume)
    x = build_features(weird)
    assert not np.isinf(x).any()


def test_horizon_log_return_and_sign() -> None:
    close = np.array([100.0, 110.0, 99.0, 121.0])
    target = horizon_log_return(close, 2)
    np.testing.assert_allclose(target[:2], [np.log(0.99), np.log(1.1)])
    assert np.isnan(target[2:]).all()
    np.testing.assert_array_equal(horizon_sign(target)[:2], [0.0, 1.0])
    assert np.isnan(horizon_sign(target)[2:]).all()
