"""The costed backtest: timing, costs, baselines, and the position rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_daemon.core.evaluation.backtest import (
    buy_and_hold,
    cost_rate,
    flat,
    next_bar_returns,
    position_from_forecast,
    run_backtest,
)


def _loop_backtest(
    close: np.ndarray, idx: np.ndarray, positions: np.ndarray, rate: float
) -> np.ndarray:
    """The backtest written as the obvious loop over decisions."""
    net, held = [], 0.0
    for t, pos in zip(idx, positions, strict=True):
        fee = rate * abs(pos - held)
        held = pos
        net.append(pos * (close[t + 1] / close[t] - 1.0) - fee)
    return np.array(net)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), discrete=st.booleans(), fee=st.floats(0, 50))
def test_vectorized_backtest_equals_the_loop(seed: int, discrete: bool, fee: float) -> None:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(300)))
    idx = np.arange(50, 299)
    positions = (
        rng.integers(-1, 2, idx.size).astype(float) if discrete else rng.uniform(-1, 1, idx.size)
    )
    rate = cost_rate(fee, 2.0)
    result = run_backtest(positions, next_bar_returns(close, idx), rate)
    np.testing.assert_allclose(result.net, _loop_backtest(close, idx, positions, rate), atol=1e-15)


def test_small_case_by_hand() -> None:
    """Decide at closes 100, 110, 99, 99: long, long, short, flat; 10 + 2 bps."""
    close = np.array([100.0, 110.0, 99.0, 99.0, 108.9])
    idx = np.arange(4)
    result = run_backtest(np.array([1.0, 1.0, -1.0, 0.0]), next_bar_returns(close, idx), 0.0012)
    np.testing.assert_allclose(result.asset_returns, [0.1, -0.1, 0.0, 0.1], atol=1e-15)
    np.testing.assert_allclose(result.costs, [0.0012, 0.0, 0.0024, 0.0012], atol=1e-15)
    np.testing.assert_allclose(result.net, [0.0988, -0.1, -0.0024, -0.0012], atol=1e-15)


def test_position_decided_at_close_t_earns_the_next_bar() -> None:
    close = np.array([100.0, 100.0, 150.0, 150.0])
    # Long only at bar 1's close: earns bar 2's +50%; long at bar 2 earns nothing.
    result = run_backtest(np.array([0.0, 1.0, 0.0]), next_bar_returns(close, np.arange(3)), 0.0)
    np.testing.assert_allclose(result.net, [0.0, 0.5, 0.0])


def test_baselines() -> None:
    asset = np.array([0.01, -0.02, 0.03])
    hold = buy_and_hold(asset, 0.001)
    np.testing.assert_allclose(hold.net, [0.009, -0.02, 0.03])
    nothing = flat(asset, 0.001)
    assert not nothing.net.any() and not nothing.costs.any()


def test_backtest_rejects_bad_positions() -> None:
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        run_backtest(np.array([1.5]), np.array([0.01]), 0.0)
    with pytest.raises(ValueError, match="differ"):
        run_backtest(np.array([1.0, 0.0]), np.array([0.01]), 0.0)


def test_position_rule() -> None:
    mu = np.array([0.01, 0.01, -0.01, -0.01, 0.01, 0.0, -0.02])
    p_up = np.array([0.60, 0.54, 0.40, 0.46, 0.30, 0.9, 0.55])
    np.testing.assert_array_equal(
        position_from_forecast(mu, p_up, threshold=0.05), [1, 0, -1, 0, 0, 0, 0]
    )
    assert position_from_forecast(mu, p_up, threshold=0.0)[1] == 1.0
