"""An evaluation as data: the metrics JSON, the returns CSV, the calibration JSON.

``metrics_json`` gives the one JSON shape that the CLI prints, the artifact
metadata stores and the registry gates read. ``returns_csv`` is
``ts,strategy,buy_and_hold``: per-bar simple returns after costs, ``ts`` the
epoch-ms open time of the bar whose return it is. Numbers that are undefined
(a profit factor without losses, a win rate without trades) are JSON null.

``calibration_json`` gives ``calibration.json`` for the report folder: the
test-window ECE of ``p_up`` with its reliability bins, and per test window
the validation ECE before and after calibration (``models.calibrated``), and
``intervals``: the forecast intervals' test-window ``coverage_90`` and
``pinball`` (``core.conformal``; each window's calibration size is its
``intervals_n_cal``). The ECE is not a ``JSON_KEYS`` key: the artifact
metadata's ``metrics`` carry it as ``ece`` beside them.

Pure: ``storage.report_files`` writes the report folder (``metrics.json``,
``returns.csv``, ``equity.png``, ``calibration.json``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantum_daemon.core.calibration import reliability
from quantum_daemon.core.evaluation.performance import TradingMetrics
from quantum_daemon.core.evaluation.walkforward import EvaluationReport

JSON_KEYS = (
    "model_id",
    "version",
    "family",
    "trades",
    "win_rate",
    "sharpe",
    "sortino",
    "profit_factor",
    "max_drawdown",
    "exposure",
    "turnover",
    "total_return",
    "psr",
    "dsr",
    "mae",
    "mase",
    "hit_rate",
    "n_test_bars",
    "baselines",
)


def finite_or_none(value: float | int | None) -> float | int | None:
    if value is None or isinstance(value, int):
        return value
    return float(value) if math.isfinite(value) else None


def _trading_dict(metrics: TradingMetrics) -> dict[str, float | int | None]:
    return {k: finite_or_none(v) for k, v in metrics.as_dict().items()}


def metrics_json(
    report: EvaluationReport, model_id: str, version: str, family: str
) -> dict[str, Any]:
    """The metrics of one evaluation, keys exactly ``JSON_KEYS``."""
    return {
        "model_id": model_id,
        "version": version,
        "family": family,
        **_trading_dict(report.trading),
        "psr": finite_or_none(report.psr),
        "dsr": finite_or_none(report.dsr),
        "mae": finite_or_none(report.forecast.mae),
        "mase": finite_or_none(report.forecast.mase),
        "hit_rate": finite_or_none(report.forecast.hit_rate),
        "n_test_bars": report.n_test_bars,
        "baselines": {k: _trading_dict(v) for k, v in report.baseline_metrics.items()},
    }


CALIBRATION_FILE = "calibration.json"
N_BINS = 10
_FIT_PREFIX = "calibration_"
_INTERVALS_N_CAL = "intervals_n_cal"  # the fit's calibration size of its intervals


def calibration_json(report: EvaluationReport) -> dict[str, Any]:
    """Test-window ECE and reliability bins, validation ECE per test window."""
    up = np.where(np.isnan(report.outcome), np.nan, report.outcome > 0)
    bins = reliability(report.p_up, up, N_BINS)
    windows = []
    for number, outcome in enumerate(report.folds):
        found = {
            k.removeprefix(_FIT_PREFIX): v
            for k, v in outcome.fit.extra.items()
            if k.startswith(_FIT_PREFIX)
        }
        n_cal = outcome.fit.extra.get(_INTERVALS_N_CAL)
        windows.append(
            {"window": number, "refitted": outcome.refitted, **found, _INTERVALS_N_CAL: n_cal}
        )
    return {
        "n_bins": N_BINS,
        "test": {
            "ece": finite_or_none(report.ece),
            "n": sum(b.count for b in bins),
            "reliability": [
                {
                    "lower": b.lower,
                    "upper": b.upper,
                    "count": b.count,
                    "mean_p": b.mean_p,
                    "frequency": b.frequency,
                }
                for b in bins
            ],
        },
        "validation": windows,
        "intervals": {
            "coverage_90": finite_or_none(report.coverage_90),
            "pinball": finite_or_none(report.pinball),
            "n": int(np.sum(np.isfinite(report.outcome))) if report.quantiles is not None else 0,
        },
    }


def returns_csv(report: EvaluationReport) -> str:
    bh = report.baselines["buy_and_hold"].net
    lines = ["ts,strategy,buy_and_hold"]
    lines += [
        f"{int(ts)},{s!r},{b!r}"
        for ts, s, b in zip(
            report.return_ts, report.strategy.net.tolist(), bh.tolist(), strict=True
        )
    ]
    return "\n".join(lines) + "\n"
