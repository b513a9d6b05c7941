"""Train and evaluate one version of a multi-symbol model (``{family}_multi_{TF}``).

``train_offline_multi(spec)`` is ``offline.train_offline`` for a spec whose
``series`` holds the bars of every symbol: the walk-forward evaluation runs
per symbol on that symbol's own windows (``walkforward_multi``), the model of
the last window is stored as the version, and the metadata keeps, beside the
usual keys, ``symbols`` and ``per_symbol``: each symbol's data window and
metrics (the same JSON shape as a single-symbol version's).

The version's top-level ``metrics`` are those of its weakest symbol (lowest
Sharpe) with ``per_symbol`` inside them: the promotion gates run on every
symbol's metrics and the version passes only if it passes on each
(``core.promotion.judge``), since the model carries weight in each of its
symbols' ensembles. ``returns.csv`` (the dashboard's equity curve) is the
weakest symbol's; ``returns_<SYMBOL>.csv`` are every symbol's.

Hyper-parameter search (``[tuning]``) does not run for a multi model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantum_daemon.core.evaluation.report import finite_or_none, metrics_json, returns_csv
from quantum_daemon.core.evaluation.walkforward import EvaluationReport, EvaluationSettings
from quantum_daemon.core.evaluation.walkforward_multi import MultiEvaluation, walk_forward_multi
from quantum_daemon.core.promotion import PER_SYMBOL_KEY
from quantum_daemon.domain.ids import MULTI_SYMBOL
from quantum_daemon.models.multi import multi_family
from quantum_daemon.storage import artifacts

if TYPE_CHECKING:
    from quantum_daemon.training.offline import OfflineResult, OfflineSpec


def train_offline_multi(spec: OfflineSpec) -> OfflineResult:
    from quantum_daemon.training.offline import (
        RETURNS_FILE,
        OfflineResult,
        with_evaluation_keys,
    )

    started = time.perf_counter()
    now = spec.now or datetime.now(UTC)
    settings = spec.settings()
    params = with_evaluation_keys(spec.family, spec.params, settings)
    series = {bars.symbol: bars for bars in spec.series}
    evaluation = walk_forward_multi(
        multi_family(spec.family), series, settings, seed=spec.seed, params=params
    )
    model_id = artifacts.model_id_for(spec.family, MULTI_SYMBOL, spec.tf)
    weakest = weakest_symbol(evaluation.reports)

    def write_files(folder: Path) -> list[Path]:
        files = [*evaluation.model.save(folder)]
        files.append(_write(folder / RETURNS_FILE, returns_csv(evaluation.reports[weakest])))
        for symbol, report in evaluation.reports.items():
            files.append(_write(folder / f"returns_{symbol}.csv", returns_csv(report)))
        return files

    stored = artifacts.write_version(
        spec.data_dir, model_id, write_files, _metadata(spec, settings, evaluation), now
    )
    metrics = multi_metrics(evaluation.reports, model_id, stored.version, spec.family)
    return OfflineResult(
        model_id=model_id,
        version=stored.version,
        artifact_dir=stored.path,
        metrics=metrics,
        fit=evaluation.reports[weakest].folds[-1].fit,
        seconds=time.perf_counter() - started,
    )


def weakest_symbol(reports: Mapping[str, EvaluationReport]) -> str:
    """The symbol with the lowest Sharpe after costs (an undefined Sharpe is lowest)."""

    def sharpe(symbol: str) -> float:
        value = reports[symbol].trading.sharpe
        return value if math.isfinite(value) else -math.inf

    return min(reports, key=sharpe)


def multi_metrics(
    reports: Mapping[str, EvaluationReport], model_id: str, version: str, family: str
) -> dict[str, Any]:
    """The weakest symbol's metrics, with every symbol's under ``per_symbol``."""
    per_symbol = {s: metrics_json(r, model_id, version, family) for s, r in reports.items()}
    weakest = weakest_symbol(reports)
    return {
        **per_symbol[weakest],
        "weakest_symbol": weakest,
        PER_SYMBOL_KEY: {s: _numbers(m) for s, m in per_symbol.items()},
    }


def _metadata(
    spec: OfflineSpec, settings: EvaluationSettings, evaluation: MultiEvaluation
) -> dict[str, Any]:
    from quantum_daemon.training.offline import _data_window, _settings_dict

    state = evaluation.model.metadata()
    reports = evaluation.reports
    weakest = weakest_symbol(reports)
    windows = {
        b.symbol: _data_window(b, reports[b.symbol].folds[-1].fold, reports[b.symbol])
        for b in spec.series
    }
    last = reports[weakest].folds[-1]
    metrics = multi_metrics(reports, "", "", spec.family)
    for symbol, numbers in metrics[PER_SYMBOL_KEY].items():
        numbers["ece"] = finite_or_none(reports[symbol].ece)
    return {
        "family": spec.family,
        "symbol": MULTI_SYMBOL,
        "symbols": list(reports),
        "tf": spec.tf,
        "horizon": settings.horizon,
        # the first symbol's windows (the head-to-head reads each symbol's own)
        "data_window": {
            **windows[spec.series[0].symbol],
            "bars": {
                "first_ts": min(w["bars"]["first_ts"] for w in windows.values()),
                "last_ts": max(w["bars"]["last_ts"] for w in windows.values()),
                "count": sum(w["bars"]["count"] for w in windows.values()),
            },
        },
        "features": state.get("features", []),
        "params": state.get("params", dict(spec.params)),
        "params_set": dict(spec.params),
        "seed": spec.seed,
        "trials": spec.n_trials or 1,
        "library_versions": state.get("library_versions", {}),
        "evaluation": _settings_dict(settings),
        "fit": {
            "best_iteration": last.fit.best_iteration,
            "val_loss": last.fit.val_loss,
            **dict(last.fit.extra),
        },
        "metrics": {
            **_numbers(metrics),
            "ece": finite_or_none(reports[weakest].ece),
        },
        PER_SYMBOL_KEY: {
            s: {"data_window": windows[s], "metrics": metrics[PER_SYMBOL_KEY][s]} for s in reports
        },
        "model": state,
    }


def _numbers(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("model_id", "version", "family")}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
