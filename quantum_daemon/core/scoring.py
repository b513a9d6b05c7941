"""Scoring live predictions once their outcome is known: losses in [0, 1].

Forecasters (``mu``, ``p_up`` for the log return over the next ``horizon``
bars) are scored when the horizon has elapsed:

- ``brier = (p_up - y)^2`` with ``y = 1`` when the realized log return is
  positive: a proper scoring rule, in [0, 1] without clipping; it is the trust
  loss (0.25 for a coin flip);
- ``log_loss`` (``p_up`` clipped to [1e-6, 1 - 1e-6]) and ``mu_error``
  (``|mu - realized|``) are reported beside it, not used by trust.

Position families (``evo_model``, ``rl_sizer``) are scored one bar after
their decision, on the realized costed return of their position against the
plain signal-to-position rule, with the evaluator's simulator (a position
decided at a bar's close earns the next bar's return; every change of
position pays the cost rate): ``excess = net(family) - net(plain rule)``,
mapped to [0, 1] by

    loss = 1 / (1 + 3 exp(excess / scale))

where ``scale`` is the recent standard deviation of one-bar returns. Matching
the plain rule costs 0.25, the Brier score of a coin flip, so a family that
adds nothing ranks with a forecaster that knows nothing; beating the rule by
one ``scale`` costs 0.11, trailing it by one costs 0.48; the loss tends to 0
and 1 for large excesses. docs/trust.md discusses the choice.

Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantum_daemon.core.evaluation.backtest import (
    DEFAULT_POSITION_THRESHOLD,
    position_changes,
    position_from_forecast,
    run_backtest,
)
from quantum_daemon.core.evaluation.performance import sharpe_ratio, total_return

LOG_LOSS_EPS = 1e-6
PARITY_ODDS = 3.0  # loss at zero excess = 1 / (1 + 3) = 0.25, a coin flip's Brier score
MIN_SCALE = 1e-6


@dataclass(frozen=True)
class ForecastScore:
    """Score of one forecast; ``loss`` (the Brier score) is what trust uses."""

    brier: float
    log_loss: float
    mu_error: float
    realized: float

    @property
    def loss(self) -> float:
        return self.brier


@dataclass(frozen=True)
class PositionScore:
    """Score of one position decision against the plain rule's on the same bar."""

    net: float
    plain_net: float
    scale: float
    loss: float

    @property
    def excess(self) -> float:
        return self.net - self.plain_net


def realized_log_return(close_at_decision: float, close_at_horizon: float) -> float:
    """log(close[t + h] / close[t]): what a forecast made at bar t's close predicted."""
    return math.log(close_at_horizon / close_at_decision)


def score_forecast(mu: float, p_up: float, realized: float) -> ForecastScore:
    """Brier, log loss and mu error of one forecast against the realized log return."""
    if not 0.0 <= p_up <= 1.0:
        raise ValueError(f"p_up must lie in [0, 1], got {p_up!r}")
    if not (math.isfinite(mu) and math.isfinite(realized)):
        raise ValueError(f"mu and the realized return must be finite, got {mu!r}, {realized!r}")
    up = 1.0 if realized > 0 else 0.0
    p = min(max(p_up, LOG_LOSS_EPS), 1.0 - LOG_LOSS_EPS)
    log_loss = -(up * math.log(p) + (1.0 - up) * math.log(1.0 - p))
    return ForecastScore((p_up - up) ** 2, log_loss, abs(mu - realized), realized)


def bar_net_return(position: float, previous: float, asset_return: float, rate: float) -> float:
    """Costed return of holding ``position`` over one bar after holding ``previous``:
    the evaluator's backtest for a single bar."""
    cost = rate * float(position_changes(np.array([position]), initial=previous)[0])
    return position * asset_return - cost


def position_loss(excess: float, scale: float) -> float:
    """Map a costed excess return to [0, 1]: 0.25 at parity (module docstring)."""
    z = excess / max(scale, MIN_SCALE)
    if z > 700:  # exp would overflow; the loss is 0 to double precision anyway
        return 0.0
    return 1.0 / (1.0 + PARITY_ODDS * math.exp(z))


def score_position(
    position: tuple[float, float],
    plain: tuple[float, float],
    asset_return: float,
    rate: float,
    scale: float,
) -> PositionScore:
    """Score a position decision. ``position`` and ``plain`` are (previous,
    current) positions of the family and of the plain rule; ``asset_return``
    is the simple return of the bar after the decision."""
    net = bar_net_return(position[1], position[0], asset_return, rate)
    plain_net = bar_net_return(plain[1], plain[0], asset_return, rate)
    return PositionScore(net, plain_net, scale, position_loss(net - plain_net, scale))


def return_scale(close: np.ndarray, window: int = 96) -> float:
    """Standard deviation of the last ``window`` one-bar simple returns of ``close``."""
    recent = np.asarray(close[-(window + 1) :], dtype=np.float64)
    if recent.size < 3:
        return MIN_SCALE
    return max(float(np.std(np.diff(recent) / recent[:-1], ddof=1)), MIN_SCALE)


@dataclass(frozen=True)
class PlainRuleComparison:
    """A position family's costed track against the plain rule's on the same
    signal and bars; Sharpe ratios annualized with ``periods_per_year``."""

    sharpe: float
    plain_sharpe: float
    total_return: float
    plain_total_return: float

    @property
    def beats(self) -> bool:
        return self.sharpe > self.plain_sharpe


def compare_with_plain_rule(
    positions: np.ndarray,
    mu: np.ndarray,
    p_up: np.ndarray,
    asset_returns: np.ndarray,
    rate: float,
    threshold: float = DEFAULT_POSITION_THRESHOLD,
    periods_per_year: float = 1.0,
) -> PlainRuleComparison:
    """Backtest ``positions`` and the plain rule's positions for (``mu``,
    ``p_up``) against the same next-bar returns: the gate a sizer must pass."""
    own = run_backtest(np.asarray(positions, dtype=np.float64), asset_returns, rate).net
    plain_positions = position_from_forecast(np.asarray(mu), np.asarray(p_up), threshold)
    plain = run_backtest(plain_positions, asset_returns, rate).net
    return PlainRuleComparison(
        sharpe_ratio(own, periods_per_year),
        sharpe_ratio(plain, periods_per_year),
        total_return(own),
        total_return(plain),
    )
