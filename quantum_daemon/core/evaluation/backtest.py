"""The costed backtest, vectorized, and the rule that turns a forecast into a position.

Timing: ``position[i]`` is decided at the close of decision bar ``t = idx[i]``
and earns the simple return of the next bar, ``close[t+1] / close[t] - 1``.
Every change of position costs ``(fee_bps + slippage_bps) / 1e4`` per unit of
position traded, charged on the bar where it happens; the position before
the first decision is flat, and a position still open at the end is not
closed (it is marked to market).

Position rule (``position_from_forecast``): go long one unit when
``mu > 0`` and ``p_up >= 0.5 + threshold``, short one unit when ``mu < 0`` and
``p_up <= 0.5 - threshold``, otherwise stay flat. Both parts of a forecast
must agree and the model must be at least ``threshold`` away from a coin flip
before any fee is paid; sizes are -1, 0 or +1 so that a noisy forecast does
not churn the position (and pay fees) bar by bar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_POSITION_THRESHOLD = 0.05
BPS = 1e-4


@dataclass(frozen=True)
class BacktestResult:
    """Per test decision: the position, what it earned before and after costs."""

    positions: np.ndarray
    asset_returns: np.ndarray
    gross: np.ndarray
    costs: np.ndarray
    net: np.ndarray
    cost_rate: float

    def __len__(self) -> int:
        return int(self.net.shape[0])


def cost_rate(fee_bps: float, slippage_bps: float) -> float:
    """Cost per unit of position traded, as a fraction."""
    return (fee_bps + slippage_bps) * BPS


def position_from_forecast(
    mu: np.ndarray, p_up: np.ndarray, threshold: float = DEFAULT_POSITION_THRESHOLD
) -> np.ndarray:
    """-1, 0 or +1 per decision; see the module docstring for the rule."""
    long = (mu > 0) & (p_up >= 0.5 + threshold)
    short = (mu < 0) & (p_up <= 0.5 - threshold)
    return long.astype(np.float64) - short.astype(np.float64)


def next_bar_returns(close: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Simple return from the close of each decision bar to the next close."""
    return close[idx + 1] / close[idx] - 1.0


def position_changes(positions: np.ndarray, initial: float = 0.0) -> np.ndarray:
    """|position[i] - position[i-1]|, with ``initial`` before the first decision."""
    return np.abs(np.diff(positions, prepend=initial))


def run_backtest(positions: np.ndarray, asset_returns: np.ndarray, rate: float) -> BacktestResult:
    """Vectorized costed backtest of ``positions`` against next-bar ``asset_returns``."""
    if positions.shape != asset_returns.shape:
        raise ValueError(f"positions {positions.shape} and returns {asset_returns.shape} differ")
    if np.any(np.abs(positions) > 1.0 + 1e-12):
        raise ValueError("positions must lie in [-1, 1]")
    gross = positions * asset_returns
    costs = rate * position_changes(positions)
    return BacktestResult(positions, asset_returns, gross, costs, gross - costs, rate)


def buy_and_hold(asset_returns: np.ndarray, rate: float) -> BacktestResult:
    """Long one unit from the first test decision on (the entry is charged)."""
    return run_backtest(np.ones_like(asset_returns), asset_returns, rate)


def flat(asset_returns: np.ndarray, rate: float) -> BacktestResult:
    """Never in the market: the baseline of doing nothing."""
    return run_backtest(np.zeros_like(asset_returns), asset_returns, rate)
