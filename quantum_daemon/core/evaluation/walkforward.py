"""Walk-forward evaluation of any model family, out of sample and after costs.

For each of ``n_test_windows`` consecutive test windows (oldest first) a new
model is fitted on everything before the window (train + validation, with
the embargo of ``splits``), then asked for forecasts at the window's
decisions. Fitting sees only the bars up to the last validation target;
prediction sees only the bars up to the window's last decision, so a family
cannot read the bars whose returns it is judged on. The windows' positions
are concatenated into one out-of-sample track (a position carries over from
one window into the next), backtested with costs, and scored.

``refit_every_window=False`` fits once, before the first window, and keeps
that model for all of them: cheaper, still out of sample, but staler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from quantum_daemon.core.calibration import expected_calibration_error
from quantum_daemon.core.conformal import LEVELS, interval_coverage, mean_pinball
from quantum_daemon.core.evaluation.backtest import (
    BacktestResult,
    buy_and_hold,
    cost_rate,
    flat,
    next_bar_returns,
    position_from_forecast,
    run_backtest,
)
from quantum_daemon.core.evaluation.performance import (
    ForecastMetrics,
    TradingMetrics,
    forecast_metrics,
    trading_metrics,
)
from quantum_daemon.core.evaluation.significance import dsr_of_returns, psr_of_returns
from quantum_daemon.core.evaluation.splits import Fold, SplitPlan, walk_forward_folds
from quantum_daemon.core.features import horizon_log_return
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import EvaluationConfig
from quantum_daemon.domain.forecasting import Family, FitInfo, Forecast, TrainSet
from quantum_daemon.domain.timeframes import bars_per_year


@dataclass(frozen=True)
class EvaluationSettings(EvaluationConfig):
    """How a family is judged: the ``[evaluation]`` keys with their defaults
    (``EvaluationConfig``), from the config (``from_config``) or built in code.
    A ``trial_sharpe_variance`` of 0 means not known (``known_trial_variance``)."""

    @classmethod
    def from_config(cls, config: EvaluationConfig, **overrides: Any) -> EvaluationSettings:
        values = {f.name: getattr(config, f.name) for f in fields(config)}
        return cls(**{**values, **overrides})

    @property
    def known_trial_variance(self) -> float | None:
        """The trials' Sharpe variance for the DSR; None: the null's 1 / (n - 1)."""
        return self.trial_sharpe_variance or None


@dataclass(frozen=True)
class FoldOutcome:
    fold: Fold
    fit: FitInfo
    refitted: bool


@dataclass(frozen=True)
class EvaluationReport:
    """Everything one evaluation measured. Arrays run over the test decisions."""

    symbol: str
    tf: str
    horizon: int
    test_idx: np.ndarray
    return_ts: np.ndarray  # open time of the bar whose return each decision earns (ms)
    mu: np.ndarray
    p_up: np.ndarray
    outcome: np.ndarray  # realized log return over the horizon; NaN past the data
    strategy: BacktestResult
    trading: TradingMetrics
    forecast: ForecastMetrics
    psr: float
    dsr: float
    baselines: Mapping[str, BacktestResult]
    baseline_metrics: Mapping[str, TradingMetrics]
    folds: tuple[FoldOutcome, ...] = field(default=())
    ece: float = float("nan")  # expected calibration error of p_up on the test decisions
    # q05 / q50 / q95 columns per test decision where the model gives intervals
    quantiles: np.ndarray | None = None
    coverage_90: float = float("nan")  # share of known outcomes inside [q05, q95]
    pinball: float = float("nan")  # mean pinball loss over the three levels

    @property
    def n_test_bars(self) -> int:
        return len(self.strategy)


@dataclass(frozen=True)
class Evaluation:
    report: EvaluationReport
    model: Family  # the model of the last test window, as fitted for it


def split_plan(n_bars: int, settings: EvaluationSettings) -> SplitPlan:
    return SplitPlan(
        n_bars=n_bars,
        horizon=settings.horizon,
        val_fraction=settings.val_fraction,
        test_fraction=settings.test_fraction,
        n_windows=settings.n_test_windows,
    )


def walk_forward(
    make_family: Callable[[], Family],
    bars: Bars,
    settings: EvaluationSettings,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Fit and judge a family over consecutive test windows; see the module docstring."""
    folds = walk_forward_folds(split_plan(len(bars), settings))
    outcomes: list[FoldOutcome] = []
    forecasts: list[Forecast] = []
    fitted: tuple[Family, FitInfo] | None = None
    for fold in folds:
        refit = fitted is None or settings.refit_every_window
        if fitted is None or refit:
            fitted = _fit(make_family, _train_set(bars, fold, settings, seed, params or {}))
        model, info = fitted
        outcomes.append(FoldOutcome(fold, info, refit))
        forecasts.append(model.predict(bars.slice(0, int(fold.test_idx[-1]) + 1), fold.test_idx))
    return Evaluation(_report(bars, settings, tuple(outcomes), forecasts), model)


def _fit(make_family: Callable[[], Family], data: TrainSet) -> tuple[Family, FitInfo]:
    model = make_family()
    return model, model.fit(data)


def _train_set(
    bars: Bars, fold: Fold, settings: EvaluationSettings, seed: int, params: Mapping[str, Any]
) -> TrainSet:
    return TrainSet(
        bars=bars.slice(0, fold.fit_end),
        horizon=settings.horizon,
        train_idx=fold.train_idx,
        val_idx=fold.val_idx,
        seed=seed,
        params=params,
    )


def positions_of(forecast: Forecast, threshold: float) -> np.ndarray:
    """The family's own positions when it gives them, else the position rule's."""
    if forecast.position is not None:
        return np.clip(np.asarray(forecast.position, dtype=np.float64), -1.0, 1.0)
    return position_from_forecast(forecast.mu, forecast.p_up, threshold)


def _report(
    bars: Bars,
    settings: EvaluationSettings,
    outcomes: tuple[FoldOutcome, ...],
    forecasts: list[Forecast],
) -> EvaluationReport:
    idx = np.concatenate([o.fold.test_idx for o in outcomes])
    mu = np.concatenate([np.asarray(f.mu, dtype=np.float64) for f in forecasts])
    p_up = np.concatenate([np.asarray(f.p_up, dtype=np.float64) for f in forecasts])
    positions = np.concatenate([positions_of(f, settings.position_threshold) for f in forecasts])
    asset = next_bar_returns(bars.close, idx)
    rate = cost_rate(settings.fee_bps, settings.slippage_bps)
    strategy = run_backtest(positions, asset, rate)
    baselines = {"buy_and_hold": buy_and_hold(asset, rate), "flat": flat(asset, rate)}
    periods = bars_per_year(bars.tf)
    outcome = horizon_log_return(bars.close, settings.horizon)[idx]
    quantiles = quantiles_of(forecasts)
    return EvaluationReport(
        symbol=bars.symbol,
        tf=bars.tf,
        horizon=settings.horizon,
        test_idx=idx,
        return_ts=bars.ts[idx + 1],
        mu=mu,
        p_up=p_up,
        outcome=outcome,
        strategy=strategy,
        trading=trading_metrics(strategy, periods),
        forecast=forecast_metrics(mu, outcome),
        psr=psr_of_returns(strategy.net),
        dsr=dsr_of_returns(strategy.net, settings.n_trials, settings.known_trial_variance),
        baselines=baselines,
        baseline_metrics={k: trading_metrics(v, periods) for k, v in baselines.items()},
        folds=outcomes,
        ece=expected_calibration_error(p_up, np.where(np.isnan(outcome), np.nan, outcome > 0)),
        **interval_scores(outcome, quantiles),
    )


def quantiles_of(forecasts: list[Forecast]) -> np.ndarray | None:
    """The forecasts' (q05, q50, q95) columns, concatenated; None unless all have them."""
    parts = []
    for f in forecasts:
        if f.q05 is None or f.q50 is None or f.q95 is None:
            return None
        parts.append(np.column_stack([f.q05, f.q50, f.q95]).astype(np.float64))
    return np.concatenate(parts) if parts else None


def interval_scores(outcome: np.ndarray, quantiles: np.ndarray | None) -> dict[str, Any]:
    """The report's interval fields: empirical 90 % coverage and mean pinball."""
    if quantiles is None:
        return {}
    return {
        "quantiles": quantiles,
        "coverage_90": interval_coverage(outcome, quantiles[:, 0], quantiles[:, 2]),
        "pinball": mean_pinball(outcome, quantiles, LEVELS),
    }
