"""Walk-forward evaluation of a multi-symbol model, judged per symbol.

Each symbol gets exactly the folds a single-symbol model of its series gets
(``walkforward.split_plan`` on its own bars), so a global model and the
per-symbol models are judged on the same test windows. For the k-th window
one model is fitted on the k-th training and validation sets of every
symbol, then asked for each symbol's k-th test window; each symbol's
forecasts make that symbol's ``EvaluationReport`` (costs, baselines, PSR /
DSR) exactly as ``walkforward`` makes a single symbol's.

No look-ahead across symbols: the k-th fit reads, of every symbol, only the
bars up to the earliest time any symbol's own k-th fit may read (its last
validation target), so no symbol's training data reaches into another
symbol's embargo or test window, even where the series are not aligned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantum_daemon.core.evaluation.splits import Fold, walk_forward_folds
from quantum_daemon.core.evaluation.walkforward import (
    EvaluationReport,
    EvaluationSettings,
    FoldOutcome,
    _report,
    split_plan,
)
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.forecasting import FitInfo, Forecast, TrainSet


@dataclass(frozen=True)
class MultiEvaluation:
    reports: Mapping[str, EvaluationReport]  # by symbol, in the model's symbol order
    model: Any  # the multi-symbol model of the last test window (``models.multi``)


def walk_forward_multi(
    make_family: Callable[[], Any],
    series: Mapping[str, Bars],
    settings: EvaluationSettings,
    seed: int = 0,
    params: Mapping[str, Any] | None = None,
) -> MultiEvaluation:
    """Fit one model per test window over every symbol; judge it per symbol."""
    folds = {s: walk_forward_folds(split_plan(len(b), settings)) for s, b in series.items()}
    outcomes: dict[str, list[FoldOutcome]] = {s: [] for s in series}
    forecasts: dict[str, list[Forecast]] = {s: [] for s in series}
    fitted: tuple[Any, FitInfo] | None = None
    for k in range(settings.n_test_windows):
        refit = fitted is None or settings.refit_every_window
        if fitted is None or refit:
            sets = train_sets(series, {s: f[k] for s, f in folds.items()}, settings, seed, params)
            model = make_family()
            fitted = model, model.fit_multi(sets)
        model, info = fitted
        for symbol, bars in series.items():
            fold = folds[symbol][k]
            outcomes[symbol].append(FoldOutcome(fold, info, refit))
            visible = bars.slice(0, int(fold.test_idx[-1]) + 1)
            forecasts[symbol].append(model.predict(visible, fold.test_idx))
    reports = {s: _report(series[s], settings, tuple(outcomes[s]), forecasts[s]) for s in series}
    return MultiEvaluation(reports, fitted[0] if fitted else None)


def train_sets(
    series: Mapping[str, Bars],
    folds: Mapping[str, Fold],
    settings: EvaluationSettings,
    seed: int,
    params: Mapping[str, Any] | None,
) -> dict[str, TrainSet]:
    """Each symbol's training set of one window, cut at the common time
    (module docstring). Raises ``ValueError`` when a symbol keeps no
    validation decision (its bars do not overlap the others' in time)."""
    cutoff = min(int(series[s].ts[folds[s].fit_end - 1]) for s in series)
    sets = {}
    for symbol, bars in series.items():
        fold, h = folds[symbol], settings.horizon
        fit_end = min(folds[symbol].fit_end, int(np.searchsorted(bars.ts, cutoff, "right")))
        train_idx = fold.train_idx[fold.train_idx + h < fit_end]
        val_idx = fold.val_idx[fold.val_idx + h < fit_end]
        if train_idx.size == 0 or val_idx.size == 0:
            raise ValueError(
                f"{symbol}'s bars do not overlap the other symbols' in time: nothing of it is "
                f"known before {cutoff} (ms), where another symbol's test window starts"
            )
        sets[symbol] = TrainSet(
            bars=bars.slice(0, fit_end),
            horizon=h,
            train_idx=train_idx,
            val_idx=val_idx,
            seed=seed,
            params=params or {},
        )
    return sets
