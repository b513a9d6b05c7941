"""Train one model version and evaluate it: the pipeline behind ``train`` and
behind the training workers.

``train_offline(spec)`` runs the walk-forward evaluation of the family on the
spec's bars, stores the model of the last test window as a new version in
the registry folder (``artifacts.write_version``) with its metrics, and
returns a small frozen result. No Redis, no CLI, no logging configuration:
the caller reports. ``spec.now`` fixes the version name (default: the clock).
The family is trained with ``p_up`` calibrated on its validation windows
(``families.calibrated_family``); the stored metrics add the test-window
``ece`` to the ``--json`` keys, and a report folder gets ``calibration.json``.
The version folder also keeps ``returns.csv`` (the test-window returns of the
strategy and of buy-and-hold, as in a report folder), checksummed with the
artifact: the dashboard draws its equity curves from it.

``spec.signals`` (the daemon's recorded ensemble signals) is what a family
that sizes the ensemble signal (``rl_sizer``) is trained and evaluated on
(``families.training_family``); the metadata's ``fit`` then adds
``recorded_fraction_test``, the share of the evaluation's test decisions
(``data_window.evaluation_test``, those the metrics judge) that sized a
recorded signal, beside the family's own train and validation fractions.

``spec.context`` (``[features] context``: reference bars and coarse
timeframes) is what the tree families fit their context features on; the
version's metadata records the spec (``model.context``, ``context``) so that
it is served with the same features.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantum_daemon.core.context_features import FeatureContext
from quantum_daemon.core.evaluation.report import finite_or_none, metrics_json, returns_csv
from quantum_daemon.core.evaluation.splits import Fold
from quantum_daemon.core.evaluation.walkforward import (
    Evaluation,
    EvaluationReport,
    EvaluationSettings,
    walk_forward,
)
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import EvaluationConfig, TuningConfig
from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.ids import MULTI_SYMBOL
from quantum_daemon.domain.params.catalog import params_class
from quantum_daemon.domain.signals import RecordedSignals
from quantum_daemon.models.base import FitInfo
from quantum_daemon.models.families import training_family
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.report_files import write_calibration, write_report
from quantum_daemon.training.tuning import TuningResult, tune

IDENTITY_KEYS = ("model_id", "version", "family")
RETURNS_FILE = "returns.csv"  # in each version folder; read by dashboard.py


@dataclass(frozen=True)
class OfflineSpec:
    """One offline training job. ``horizon`` / ``n_trials`` of None take the
    evaluation config's values."""

    family: str
    bars: Bars
    data_dir: Path
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 42
    horizon: int | None = None
    n_trials: int | None = None
    report_dir: Path | None = None
    now: datetime | None = None
    signals: RecordedSignals | None = None  # for rl_sizer: the recorded ensemble signal
    tuning: TuningConfig | None = None  # search the family's space first (training.tuning)
    # a multi-symbol model (``{family}_multi_{TF}``): the bars of every symbol
    # (``bars`` is the first's); trained by ``offline_multi``
    series: tuple[Bars, ...] = ()
    context: FeatureContext | None = None  # context features (core.context_features)

    @property
    def symbol(self) -> str:
        return MULTI_SYMBOL if self.series else self.bars.symbol

    @property
    def tf(self) -> str:
        return self.bars.tf

    def settings(self) -> EvaluationSettings:
        overrides: dict[str, Any] = {}
        if self.horizon is not None:
            overrides["horizon"] = self.horizon
        if self.n_trials is not None:
            overrides["n_trials"] = self.n_trials
        return EvaluationSettings.from_config(self.evaluation, **overrides)


@dataclass(frozen=True)
class OfflineResult:
    model_id: str
    version: str
    artifact_dir: Path
    metrics: dict[str, Any]  # exactly the JSON shape of evaluation.report.JSON_KEYS
    fit: FitInfo
    seconds: float
    report_files: tuple[Path, ...] = ()


def train_offline(spec: OfflineSpec) -> OfflineResult:
    if spec.series:
        from quantum_daemon.training.offline_multi import train_offline_multi

        return train_offline_multi(spec)
    started = time.perf_counter()
    now = spec.now or datetime.now(UTC)
    settings = spec.settings()
    make_family = training_family(spec.family, spec.signals, spec.context)
    params = with_evaluation_keys(spec.family, spec.params, settings)
    tuned = None
    if spec.tuning is not None:
        tuned = tune(spec.family, make_family, spec.bars, settings, spec.seed, params, spec.tuning)
        params = tuned.params
        # the test windows' deflated Sharpe counts every parameter set tried
        settings = dataclasses.replace(settings, n_trials=max(settings.n_trials, tuned.n_trials))
    evaluation = walk_forward(make_family, spec.bars, settings, seed=spec.seed, params=params)
    model_id = artifacts.model_id_for(spec.family, spec.symbol, spec.tf)
    stored = artifacts.write_version(
        spec.data_dir,
        model_id,
        lambda folder: [*evaluation.model.save(folder), _write_returns(folder, evaluation)],
        _metadata(spec, settings, evaluation, tuned),
        now,
    )
    metrics = metrics_json(evaluation.report, model_id, stored.version, spec.family)
    files = _report_files(spec, metrics, evaluation.report)
    return OfflineResult(
        model_id=model_id,
        version=stored.version,
        artifact_dir=stored.path,
        metrics=metrics,
        fit=evaluation.report.folds[-1].fit,
        seconds=time.perf_counter() - started,
        report_files=files,
    )


def _write_returns(folder: Path, evaluation: Evaluation) -> Path:
    path = folder / RETURNS_FILE
    path.write_text(returns_csv(evaluation.report))
    return path


def with_evaluation_keys(
    family: str, params: Mapping[str, Any], settings: EvaluationSettings
) -> dict[str, Any]:
    """``params`` with the keys a family takes from ``[evaluation]`` (the costs
    that ``evo_model`` and ``rl_sizer`` optimise at) set to the evaluation's values."""
    keys = params_class(family).evaluation_keys
    return {**params, **{key: getattr(settings, key) for key in sorted(keys)}}


def _report_files(
    spec: OfflineSpec, metrics: dict[str, Any], report: EvaluationReport
) -> tuple[Path, ...]:
    if spec.report_dir is None:
        return ()
    return (
        *write_report(spec.report_dir, metrics, report),
        write_calibration(spec.report_dir, report),
    )


def _metadata(
    spec: OfflineSpec,
    settings: EvaluationSettings,
    evaluation: Evaluation,
    tuned: TuningResult | None,
) -> dict[str, Any]:
    report, state = evaluation.report, evaluation.model.metadata()
    last = report.folds[-1]
    return {
        "family": spec.family,
        "symbol": spec.symbol,
        "tf": spec.tf,
        "horizon": settings.horizon,
        "data_window": _data_window(spec.bars, last.fold, report),
        "features": state.get("features", []),
        **({"context": state["context"]} if "context" in state else {}),
        "params": state.get("params", dict(spec.params)),
        "params_set": dict(spec.params),  # what config.toml / --param set; the rest: defaults
        "seed": spec.seed,
        # hyper-parameter sets tried for this version (``train --n-trials``, or
        # the tuning trials): the registry's trial ledger counts them
        "trials": tuned.n_trials if tuned else spec.n_trials or 1,
        **_tuning_record(tuned),
        "library_versions": state.get("library_versions", {}),
        "evaluation": _settings_dict(settings),
        "fit": {
            "best_iteration": last.fit.best_iteration,
            "val_loss": last.fit.val_loss,
            **dict(last.fit.extra),
            **_test_signal_record(spec, report),
        },
        "metrics": {
            **_numbers_only(metrics_json(report, "", "", spec.family)),
            "ece": finite_or_none(report.ece),
            "coverage_90": finite_or_none(report.coverage_90),
            "pinball": finite_or_none(report.pinball),
        },
        "model": state,
    }


def _tuning_record(tuned: TuningResult | None) -> dict[str, Any]:
    if tuned is None:
        return {}
    return {
        "tuned_params": tuned.best,
        "tuning_seconds": round(tuned.seconds, 3),
        "tuning": tuned.metadata(),
    }


def _test_signal_record(spec: OfflineSpec, report: EvaluationReport) -> dict[str, float]:
    if spec.signals is None or spec.family not in SIZER_FAMILIES:
        return {}
    fraction = spec.signals.recorded_fraction(spec.bars.ts[report.test_idx])
    return {"recorded_fraction_test": fraction}


def _numbers_only(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics without model_id / version / family (the metadata has them)."""
    return {k: v for k, v in metrics.items() if k not in IDENTITY_KEYS}


def _span(bars: Bars, idx: Any) -> dict[str, int]:
    return {"first_ts": int(bars.ts[int(idx[0])]), "last_ts": int(bars.ts[int(idx[-1])])}


def _data_window(bars: Bars, fold: Fold, report: EvaluationReport) -> dict[str, Any]:
    """Decision-bar open times (epoch ms) of the saved model's windows and of
    the whole out-of-sample evaluation."""
    return {
        "train": _span(bars, fold.train_idx),
        "val": _span(bars, fold.val_idx),
        "test": _span(bars, fold.test_idx),
        "evaluation_test": _span(bars, report.test_idx),
        "bars": {"first_ts": int(bars.ts[0]), "last_ts": int(bars.ts[-1]), "count": len(bars)},
    }


def _settings_dict(settings: EvaluationSettings) -> dict[str, Any]:
    return {k: getattr(settings, k) for k in settings.__dataclass_fields__}
