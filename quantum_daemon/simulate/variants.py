"""The variants of one simulation, from the same trained versions and the
same bars, each judged after costs with the evaluator's backtest.

- ``loop``: the loop as configured (gates, shadow, trust weights, the
  ``rl_sizer`` when one is active): the published signal's position, flat
  where nothing was published;
- ``loop_plain_rule`` (with ``rl_sizer`` simulated): the same signal under
  the plain rule's position, to show what the sizer adds;
- ``equal_weights``: the loop's active versions pooled with equal weights;
- ``newest_wins``: every family's newest trained version, live from the bar
  after its training whatever its verdict, pooled with equal weights
  (Freqtrade FreqAI's policy: no gates, no shadow, no trust);
- ``family:{name}``: that family's active version alone through the gates;
- ``hindsight_best``: the family variant with the best after-cost Sharpe over
  the whole span, chosen after the fact (marked ``hindsight``: not a policy
  one could have run);
- ``buy_and_hold`` and ``flat``.

A position decided at a bar's close earns the next bar's return and every
change of position pays ``fee_bps + slippage_bps`` (``core.evaluation.backtest``).
Series are combined with equal capital: the portfolio's return per bar is
the mean of the series' net returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantum_daemon.core.ensemble import MemberForecast, combine, plain_position
from quantum_daemon.core.evaluation.backtest import BacktestResult, run_backtest
from quantum_daemon.core.evaluation.performance import (
    max_drawdown,
    sharpe_ratio,
    sortino_ratio,
    total_return,
    trading_metrics,
)
from quantum_daemon.core.evaluation.significance import dsr_of_returns, sharpe_moments
from quantum_daemon.domain.timeframes import bars_per_year
from quantum_daemon.simulate.records import ACTIVE, BarRecord, Prediction

SIZER = "rl_sizer"
Policy = Callable[[BarRecord], float]


@dataclass(frozen=True)
class VariantResult:
    name: str
    hindsight: bool
    trial: bool  # counted in the deflated Sharpe's n_trials
    ts: np.ndarray  # decision bars (open time), portfolio
    net: np.ndarray  # portfolio net return per bar
    positions: Mapping[str, np.ndarray]  # per symbol, per its decision bars
    per_series: Mapping[str, BacktestResult]


def family_of(model_id: str) -> str:
    return model_id.rsplit("_", 2)[0]


def pooled_position(members: Sequence[tuple[str, Prediction]], threshold: float) -> float:
    """The plain rule on the equal-weight pool of ``members`` (model, forecast)."""
    forecasters = [
        MemberForecast(family_of(m), m, "", p.mu, p.p_up)
        for m, p in members
        if family_of(m) != SIZER
    ]
    if not forecasters:
        return 0.0
    pooled = combine(forecasters, {})
    return plain_position(pooled.mu, pooled.p_up, threshold)


def policies(
    families: Sequence[str], threshold: float, newest: Callable[[BarRecord], Any]
) -> dict[str, Policy]:
    def loop(r: BarRecord) -> float:
        return 0.0 if r.signal is None else float(r.signal["position"])

    def equal(r: BarRecord) -> float:
        active = [(m, p) for (m, _), (st, p) in r.forecasts.items() if st == ACTIVE]
        return pooled_position(active, threshold)

    def newest_wins(r: BarRecord) -> float:
        return pooled_position(newest(r), threshold)

    def loop_plain_rule(r: BarRecord) -> float:
        return 0.0 if r.signal is None else float(r.signal["plain_position"])

    out: dict[str, Policy] = {"loop": loop, "equal_weights": equal, "newest_wins": newest_wins}
    if SIZER in families:  # the loop's own signal without the sizer: what the sizer adds
        out["loop_plain_rule"] = loop_plain_rule
    forecasters = [f for f in families if f != SIZER]
    for family in forecasters:
        out[f"family:{family}"] = _alone(family, threshold)
    if len(forecasters) > 1:  # with one family it is newest_wins itself
        for family in forecasters:
            out[f"newest:{family}"] = _newest_alone(family, threshold, newest)
    return out


def _newest_alone(family: str, threshold: float, newest: Callable[[BarRecord], Any]) -> Policy:
    """The family's newest versions alone, no gates: what the family trains, ungated."""

    def position(r: BarRecord) -> float:
        return pooled_position([(m, p) for m, p in newest(r) if family_of(m) == family], threshold)

    return position


def _alone(family: str, threshold: float) -> Policy:
    def position(r: BarRecord) -> float:
        for (m, _), (stage, p) in r.forecasts.items():
            if stage == ACTIVE and family_of(m) == family:
                if p.position is not None:
                    return float(min(max(p.position, -1.0), 1.0))
                return plain_position(p.mu, p.p_up, threshold)
        return 0.0

    return position


def evaluate(
    records: Mapping[str, Sequence[BarRecord]],
    policy_map: Mapping[str, Policy],
    rate: float,
) -> list[VariantResult]:
    """Every policy plus buy-and-hold and flat, then the hindsight pick."""
    results = [_run(name, records, policy, rate, trial=True) for name, policy in policy_map.items()]
    results.append(_run("buy_and_hold", records, lambda _r: 1.0, rate, trial=False))
    results.append(_run("flat", records, lambda _r: 0.0, rate, trial=False))
    families = [r for r in results if r.name.startswith("family:")]
    if families:
        best = max(families, key=lambda r: (_sharpe(r.net), r.name))
        results.append(
            VariantResult(
                f"hindsight_best ({best.name})", True, False, best.ts, best.net,
                best.positions, best.per_series,
            )
        )  # fmt: skip
    return results


def _run(
    name: str,
    records: Mapping[str, Sequence[BarRecord]],
    policy: Policy,
    rate: float,
    trial: bool,
) -> VariantResult:
    per_series, positions, nets = {}, {}, {}
    for symbol, bars in records.items():
        if len(bars) < 2:
            continue
        close = np.array([b.close for b in bars])
        pos = np.array([policy(b) for b in bars[:-1]])
        asset = close[1:] / close[:-1] - 1.0
        result = run_backtest(pos, asset, rate)
        per_series[symbol], positions[symbol] = result, pos
        nets[symbol] = dict(zip((b.ts for b in bars[:-1]), result.net, strict=True))
    ts = np.array(sorted({t for n in nets.values() for t in n}), dtype=np.int64)
    net = np.array([np.mean([n[t] for n in nets.values() if t in n]) for t in ts], dtype=np.float64)
    return VariantResult(name, False, trial, ts, net, positions, per_series)


def summarize(results: Sequence[VariantResult], tf: str, trial_variance: float) -> dict[str, Any]:
    """Per variant: the figures of ``summary.json``; the DSR's ``n_trials``
    is the number of variants judged as trials in this run."""
    periods = bars_per_year(tf)
    trials = [r for r in results if r.trial]
    variance = trial_variance or _variance([sharpe_moments(r.net).sharpe for r in trials])
    out: dict[str, Any] = {}
    for r in results:
        out[r.name] = _figures(r, periods, len(trials), variance)
    return {
        "n_trials": len(trials),
        "trial_sharpe_variance": variance,
        "variants": out,
    }


def _figures(r: VariantResult, periods: float, n_trials: int, variance: float) -> dict[str, Any]:
    years = len(r.net) / periods if periods else math.nan
    growth = float(np.prod(1.0 + r.net)) if len(r.net) else 1.0
    cagr = growth ** (1.0 / years) - 1.0 if years > 0 and growth > 0 else math.nan
    trading = [trading_metrics(b, periods) for b in r.per_series.values()]
    varies = len(r.net) > 2 and float(np.std(r.net)) > 0.0
    dsr = dsr_of_returns(r.net, max(n_trials, 1), variance or None) if varies else math.nan
    return _clean(
        {
            "hindsight": r.hindsight,
            "trial": r.trial,
            "bars": len(r.net),
            "total_return": total_return(r.net),
            "cagr": cagr,
            "sharpe": sharpe_ratio(r.net, periods),
            "sortino": sortino_ratio(r.net, periods),
            "max_drawdown": max_drawdown(r.net),
            "turnover": float(np.mean([t.turnover for t in trading])) if trading else 0.0,
            "trades": int(sum(t.trades for t in trading)),
            "exposure": float(np.mean([t.exposure for t in trading])) if trading else 0.0,
            "dsr": dsr,
        }
    )


def _sharpe(net: np.ndarray) -> float:
    value = sharpe_moments(net).sharpe if len(net) > 2 else math.nan
    return value if math.isfinite(value) else -math.inf


def _variance(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.var(finite, ddof=1)) if len(finite) > 1 else 0.0


def _clean(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: a figure that cannot be computed is null."""
    out = {}
    for k, v in values.items():
        if isinstance(v, float | np.floating):
            v = float(v)
            out[k] = round(v, 10) if math.isfinite(v) else None
        else:
            out[k] = v
    return out
