"""An evaluation as data: the metrics JSON, and the report folder.

``metrics_json`` gives the one JSON shape that the CLI prints, the artifact
metadata stores and the registry gates read. ``write_report`` writes
``metrics.json``, ``returns.csv`` (``ts,strategy,buy_and_hold``: per-bar
simple returns after costs, ``ts`` the epoch-ms open time of the bar whose
return it is) and ``equity.png`` (matplotlib, imported here only, Agg backend).
Numbers that are undefined (a profit factor without losses, a win rate
without trades) are JSON null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.evaluation.performance import TradingMetrics
from quantum_daemon.evaluation.walkforward import EvaluationReport

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


def write_report(directory: Path, metrics: dict[str, Any], report: EvaluationReport) -> list[Path]:
    """Write metrics.json, returns.csv and equity.png into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "metrics.json", directory / "returns.csv", directory / "equity.png"]
    _write_text(paths[0], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    _write_text(paths[1], returns_csv(report))
    _plot_equity(paths[2], report)
    return paths


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


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _plot_equity(path: Path, report: EvaluationReport) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    when = report.return_ts.astype("datetime64[ms]")
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, net in (
        ("strategy", report.strategy.net),
        ("buy and hold", report.baselines["buy_and_hold"].net),
    ):
        ax.plot(when, np.cumprod(1.0 + net), label=name, linewidth=1.2)
    ax.axhline(1.0, color="grey", linewidth=0.6)
    ax.set_title(f"{report.symbol} {report.tf}: out-of-sample equity after costs")
    ax.set_ylabel("equity (start = 1)")
    ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
