"""Trading and forecast metrics: every number empyrical also computes matches
it to 1e-9 (relative); the trade-based ones are checked against hand cases."""

from __future__ import annotations

import empyrical
import numpy as np
import pytest

from quantum_daemon.core.evaluation.backtest import run_backtest
from quantum_daemon.core.evaluation.performance import (
    downside_risk,
    forecast_metrics,
    max_drawdown,
    profit_factor,
    round_trip_pnl,
    sharpe_ratio,
    sortino_ratio,
    total_return,
    trading_metrics,
)
from quantum_daemon.domain.timeframes import bars_per_year

REL = 1e-9


def _series(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return 0.0002 + 0.01 * rng.standard_normal(3000)
    if kind == "fat_tailed":
        return 0.004 * rng.standard_t(3, size=2500) - 0.0001
    if kind == "mostly_flat":  # a strategy out of the market most of the time
        r = 0.01 * rng.standard_normal(4000)
        return np.where(rng.random(4000) < 0.2, r, 0.0)
    raise ValueError(kind)


CASES = [(kind, seed) for kind in ("normal", "fat_tailed", "mostly_flat") for seed in (1, 2)]


@pytest.mark.parametrize(("kind", "seed"), CASES)
@pytest.mark.parametrize("tf", ["1h", "5m", "1d"])
def test_return_metrics_match_empyrical(kind: str, seed: int, tf: str) -> None:
    r = _series(kind, seed)
    periods = bars_per_year(tf)
    ann = {"annualization": periods}
    assert sharpe_ratio(r, periods) == pytest.approx(empyrical.sharpe_ratio(r, **ann), rel=REL)
    assert sortino_ratio(r, periods) == pytest.approx(empyrical.sortino_ratio(r, **ann), rel=REL)
    assert downside_risk(r, periods) == pytest.approx(empyrical.downside_risk(r, **ann), rel=REL)
    assert max_drawdown(r) == pytest.approx(empyrical.max_drawdown(r), rel=REL)
    assert total_return(r) == pytest.approx(empyrical.cum_returns_final(r), rel=REL)


def test_annualization_is_the_timeframes_bars_per_year() -> None:
    r = _series("normal", 7)
    assert bars_per_year("1h") == 8760
    per_bar = r.mean() / r.std(ddof=1)
    assert sharpe_ratio(r, 8760) == pytest.approx(per_bar * np.sqrt(8760), rel=1e-12)


def test_series_without_dispersion_or_downside_have_zero_ratios() -> None:
    flat = np.zeros(100)
    assert sharpe_ratio(flat, 8760) == 0.0
    assert sortino_ratio(flat, 8760) == 0.0
    assert max_drawdown(flat) == 0.0
    assert total_return(flat) == 0.0


def test_max_drawdown_counts_the_starting_equity_as_a_peak() -> None:
    assert max_drawdown(np.array([-0.1, 0.05])) == pytest.approx(-0.1)
    assert max_drawdown(np.array([0.1, -0.5, 0.2])) == pytest.approx(-0.5)


RATE = 0.0012


def _bt(positions: list[float], asset: list[float]) -> object:
    return run_backtest(np.array(positions), np.array(asset), RATE)


def test_round_trips_by_hand() -> None:
    """Long 2 bars, flat, short 1 bar flipped to long 1 bar (open at the end).
    Trip P&L = its gross returns - entry, resize and exit costs."""
    result = _bt([1, 1, 0, -1, 1], [0.01, -0.02, 0.03, -0.01, 0.02])
    pnl = round_trip_pnl(result)
    long_1 = 0.01 - 0.02 - RATE - RATE  # enter and exit one unit
    short = 0.01 - RATE - RATE  # enter short, closed by the flip
    long_2 = 0.02 - RATE  # opened by the flip, open at the end: no exit cost
    assert pnl == pytest.approx([long_1, short, long_2], abs=1e-15)
    # The trips' P&L plus nothing else is everything the strategy earned.
    assert pnl.sum() == pytest.approx(result.net.sum(), abs=1e-15)


def test_resizing_stays_inside_one_round_trip() -> None:
    result = _bt([0.5, 1.0, 0.25, 0.0], [0.02, 0.01, -0.04, 0.5])
    pnl = round_trip_pnl(result)
    assert pnl.size == 1
    assert pnl[0] == pytest.approx(result.net.sum(), abs=1e-15)


def test_trading_metrics_by_hand() -> None:
    result = _bt([1, 1, 0, -1, 1], [0.01, -0.02, 0.03, -0.01, 0.02])
    m = trading_metrics(result, 8760)
    assert m.trades == 3
    assert m.win_rate == pytest.approx(2 / 3)  # the first long lost
    wins = (0.01 - 2 * RATE) + (0.02 - RATE)
    assert m.profit_factor == pytest.approx(wins / (0.01 + 2 * RATE))
    assert m.exposure == pytest.approx(4 / 5)
    assert m.turnover == pytest.approx((1 + 0 + 1 + 1 + 2) / 5)
    assert m.total_return == pytest.approx(np.prod(1 + result.net) - 1)


def test_profit_factor_undefined_without_losses() -> None:
    assert profit_factor(np.array([0.01, 0.02])) is None
    assert profit_factor(np.array([])) is None
    assert profit_factor(np.array([0.03, -0.01])) == pytest.approx(3.0)


def test_no_trades_means_no_win_rate() -> None:
    m = trading_metrics(_bt([0, 0, 0], [0.01, 0.02, -0.01]), 8760)
    assert (m.trades, m.win_rate, m.profit_factor, m.exposure) == (0, None, None, 0.0)


def test_forecast_metrics_by_hand() -> None:
    mu = np.array([0.01, -0.02, 0.0, 0.03, 0.5])
    outcome = np.array([0.02, -0.01, 0.01, -0.03, np.nan])
    m = forecast_metrics(mu, outcome)
    assert m.n == 4
    assert m.mae == pytest.approx((0.01 + 0.01 + 0.01 + 0.06) / 4)
    assert m.mase == pytest.approx(m.mae / ((0.02 + 0.01 + 0.01 + 0.03) / 4))
    assert m.hit_rate == pytest.approx(2 / 4)  # a forecast of exactly 0 is no hit


def test_naive_forecast_has_mase_one_and_perfect_forecast_zero() -> None:
    outcome = np.random.default_rng(1).standard_normal(200) * 0.02
    assert forecast_metrics(np.zeros(200), outcome).mase == pytest.approx(1.0)
    perfect = forecast_metrics(outcome.copy(), outcome)
    assert (perfect.mae, perfect.mase, perfect.hit_rate) == (0.0, 0.0, 1.0)
