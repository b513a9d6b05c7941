"""Trading and forecast metrics of one evaluation.

Return-based metrics follow empyrical's definitions (tests compare them to
empyrical-reloaded to 1e-9): Sharpe = mean / std (ddof 1) * sqrt(periods per
year); Sortino = mean * periods / (sqrt(mean(min(r, 0)^2)) * sqrt(periods));
max drawdown = the most negative (equity - running peak) / running peak, with
the starting equity as the first peak (a negative fraction or 0); total
return = prod(1 + r) - 1. A series without dispersion (e.g. the flat
baseline) has Sharpe 0; one without downside has Sortino 0.

Trade-based metrics: a round trip starts when the position leaves flat or
flips sign and ends when it returns to flat or flips again; one still open at
the end of the test is closed there, marked to market without an exit fee (as
backtesters force-exit at the end). Its P&L is the sum of its bars' gross
returns minus its costs: entry, resizing, and exit. Win rate = share of round
trips with P&L > 0; profit factor = sum of winning P&L / |sum of losing P&L|
(None when undefined: no losing trade). Exposure = share of bars with a
non-zero position; turnover = sum |change of position| / bars.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from quantum_daemon.core.evaluation.backtest import BacktestResult

TRADING_KEYS = (
    "trades",
    "win_rate",
    "sharpe",
    "sortino",
    "profit_factor",
    "max_drawdown",
    "exposure",
    "turnover",
    "total_return",
)


@dataclass(frozen=True)
class TradingMetrics:
    trades: int
    win_rate: float | None
    sharpe: float
    sortino: float
    profit_factor: float | None
    max_drawdown: float
    exposure: float
    turnover: float
    total_return: float

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class ForecastMetrics:
    """``mae`` of ``mu`` against the realized horizon log return; ``mase`` = that
    MAE / the MAE of the naive no-change forecast (``mu = 0``) on the same
    decisions (< 1 beats it); ``hit_rate`` = share of decisions where the sign
    of ``mu`` equals the sign of the outcome (outcomes of exactly 0 left out)."""

    mae: float
    mase: float
    hit_rate: float
    n: int


def sharpe_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    std = _std(returns)
    if std == 0.0:
        return 0.0
    return float(np.mean(returns) / std * math.sqrt(periods_per_year))


def sortino_ratio(returns: np.ndarray, periods_per_year: float) -> float:
    downside = downside_risk(returns, periods_per_year)
    if downside == 0.0:
        return 0.0
    return float(np.mean(returns) * periods_per_year / downside)


def downside_risk(returns: np.ndarray, periods_per_year: float) -> float:
    below = np.minimum(returns, 0.0)
    return float(np.sqrt(np.mean(below**2)) * math.sqrt(periods_per_year))


def max_drawdown(returns: np.ndarray) -> float:
    equity = np.concatenate([[1.0], np.cumprod(1.0 + returns)])
    peak = np.maximum.accumulate(equity)
    return float(np.min((equity - peak) / peak))


def total_return(returns: np.ndarray) -> float:
    return float(np.prod(1.0 + returns) - 1.0)


def _std(returns: np.ndarray) -> float:
    if returns.size < 2 or np.all(returns == returns[0]):
        return 0.0
    return float(np.std(returns, ddof=1))


def round_trip_pnl(result: BacktestResult) -> np.ndarray:
    """P&L of each round trip, in order (see the module docstring)."""
    pos = result.positions
    sign = np.sign(pos)
    prev_pos = np.concatenate([[0.0], pos[:-1]])
    prev_sign = np.sign(prev_pos)
    new_trip = (sign != 0) & (sign != prev_sign)
    trip_of_bar = np.cumsum(new_trip) - 1
    sign_changed = sign != prev_sign
    exit_cost = np.where(sign_changed, result.cost_rate * np.abs(prev_pos), 0.0)
    entry_and_resize = result.costs - exit_cost
    n_trips = int(new_trip.sum())
    in_trip = sign != 0
    pnl = np.bincount(
        trip_of_bar[in_trip], (result.gross - entry_and_resize)[in_trip], minlength=n_trips
    )
    closes = sign_changed & (prev_sign != 0)
    trip_closed = trip_of_bar[closes] - new_trip[closes]  # a flip opens the next trip here
    return pnl - np.bincount(trip_closed, exit_cost[closes], minlength=n_trips)


def trading_metrics(result: BacktestResult, periods_per_year: float) -> TradingMetrics:
    net, pnl = result.net, round_trip_pnl(result)
    return TradingMetrics(
        trades=int(pnl.size),
        win_rate=float(np.mean(pnl > 0)) if pnl.size else None,
        sharpe=sharpe_ratio(net, periods_per_year),
        sortino=sortino_ratio(net, periods_per_year),
        profit_factor=profit_factor(pnl),
        max_drawdown=max_drawdown(net),
        exposure=float(np.mean(result.positions != 0)),
        turnover=float(np.sum(np.abs(np.diff(result.positions, prepend=0.0))) / len(net)),
        total_return=total_return(net),
    )


def profit_factor(trip_pnl: np.ndarray) -> float | None:
    losses = -trip_pnl[trip_pnl < 0].sum()
    if losses == 0:
        return None
    return float(trip_pnl[trip_pnl > 0].sum() / losses)


def forecast_metrics(mu: np.ndarray, outcome: np.ndarray) -> ForecastMetrics:
    """Scores of ``mu`` on the decisions whose outcome is known (not NaN)."""
    known = ~np.isnan(outcome)
    mu, outcome = mu[known], outcome[known]
    if outcome.size == 0:
        return ForecastMetrics(math.nan, math.nan, math.nan, 0)
    mae = float(np.mean(np.abs(mu - outcome)))
    naive = float(np.mean(np.abs(outcome)))
    moved = outcome != 0
    hits = np.sign(mu[moved]) == np.sign(outcome[moved])
    return ForecastMetrics(
        mae=mae,
        mase=mae / naive if naive > 0 else math.nan,
        hit_rate=float(np.mean(hits)) if hits.size else math.nan,
        n=int(outcome.size),
    )
