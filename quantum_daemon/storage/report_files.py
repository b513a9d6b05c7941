"""The report folder of an offline evaluation (``train --report DIR``):
``metrics.json``, ``returns.csv`` and ``equity.png`` (matplotlib, imported
here only, Agg backend), and ``calibration.json``. The contents come from
``core.evaluation.report``; this module only writes them, each file through
a temporary name and ``os.replace``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.core.evaluation.report import (
    CALIBRATION_FILE,
    calibration_json,
    returns_csv,
)
from quantum_daemon.core.evaluation.walkforward import EvaluationReport


def write_report(directory: Path, metrics: dict[str, Any], report: EvaluationReport) -> list[Path]:
    """Write metrics.json, returns.csv and equity.png into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "metrics.json", directory / "returns.csv", directory / "equity.png"]
    _write_text(paths[0], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    _write_text(paths[1], returns_csv(report))
    _plot_equity(paths[2], report)
    return paths


def write_calibration(directory: Path, report: EvaluationReport) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CALIBRATION_FILE
    _write_text(path, json.dumps(calibration_json(report), indent=2, allow_nan=False) + "\n")
    return path


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
