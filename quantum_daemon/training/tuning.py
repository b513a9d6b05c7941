"""Hyper-parameter search inside a training job (docs/tuning.md).

Optuna's TPE sampler, seeded (``[tuning] seed``), searches the family's
declared space (``search_space`` of its class in ``domain.params``) around
the job's configured parameters, which are the first trial. Each trial fits
the family on the first walk-forward fold's training window and scores it on
that fold's validation window, with the family's own validation loss (what
its early stopping minimises: the MSE of ``mu`` for the trees, the z-unit
loss for the torch families, minus the validation Sharpe for ``evo_model``
and ``rl_sizer``). The bars handed to a trial end at that fold's last
validation target, so no trial reads a bar of any test window: the walk-
forward evaluation that follows judges the chosen parameters on bars the
search never saw.

Pruning (``MedianPruner``) stops a trial whose validation curve is worse than
the median of the earlier trials at the same step; only the families that
report a curve (``TrainSet.on_validation``: ``xgb``, ``lgbm``, ``nhits``,
``patchtst``) can be pruned; ``evo_model`` and ``rl_sizer`` run every trial
to its end. The search stops at ``max_trials`` or once ``timeout_s`` has
passed (checked between trials). Every trial started, pruned ones included,
is a trial of the deflated Sharpe: ``TuningResult.n_trials``.

optuna is imported inside ``tune`` only: the daemon imports this package.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantum_daemon.core.evaluation.splits import Fold, walk_forward_folds
from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, split_plan
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import TuningConfig
from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.domain.forecasting import Family, TrainSet
from quantum_daemon.domain.params.base import Choices, Dimension, MappingParams, contains
from quantum_daemon.domain.params.catalog import checked, params_class

if TYPE_CHECKING:
    import optuna

WARMUP_STEPS = 10  # a curve's first steps say little: no pruning before this step
CAUGHT = (ValueError, ArithmeticError, RuntimeError)  # a trial that raises these failed


@dataclass(frozen=True)
class TuningResult:
    """What the search found and what it cost."""

    params: dict[str, Any]  # the job's parameters with the best trial's values on top
    best: dict[str, Any]  # the searched keys' best values
    best_value: float  # the best trial's validation loss
    n_trials: int  # every trial started: what the trial ledger counts
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float
    window: dict[str, dict[str, int]]  # decision-bar open times of the searched windows
    plan: TuningConfig

    def metadata(self) -> dict[str, Any]:
        """The version's ``tuning`` record (``tuned_params`` and ``trials`` sit beside it)."""
        return {
            "sampler": f"TPE(seed={self.plan.seed}, startup_trials={self.plan.startup_trials})",
            "pruner": "median" if self.plan.pruning else "none",
            "max_trials": self.plan.max_trials,
            "timeout_s": self.plan.timeout_s,
            "n_trials": self.n_trials,
            "n_complete": self.n_complete,
            "n_pruned": self.n_pruned,
            "n_failed": self.n_failed,
            "best_val_loss": self.best_value,
            "objective": "the family's validation loss on the first fold (lower is better)",
            "window": self.window,
        }


def tune(
    family: str,
    make_family: Callable[[], Family],
    bars: Bars,
    settings: EvaluationSettings,
    seed: int,
    params: Mapping[str, Any],
    plan: TuningConfig,
) -> TuningResult:
    """Search ``family``'s space on the first fold's validation window (module docstring)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    fold = walk_forward_folds(split_plan(len(bars), settings))[0]
    data = TrainSet(
        bars=bars.slice(0, fold.fit_end),  # ends before the first test decision
        horizon=settings.horizon,
        train_idx=fold.train_idx,
        val_idx=fold.val_idx,
        seed=seed,
        params=dict(params),
    )
    space = params_class(family).search_space
    study = _study(plan)
    start = _starting_point(family, params, space)
    if start:
        study.enqueue_trial(start)
    study.optimize(
        _objective(family, make_family, data, space, plan.pruning),
        n_trials=plan.max_trials,
        timeout=plan.timeout_s or None,
        catch=CAUGHT,
    )
    return _result(study, params, plan, time.perf_counter() - started, _window(bars, fold))


def _study(plan: TuningConfig) -> optuna.Study:
    import optuna

    sampler = optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=plan.startup_trials)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=plan.startup_trials, n_warmup_steps=WARMUP_STEPS
        )
        if plan.pruning
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(direction="minimize", sampler=sampler, pruner=pruner)


def _starting_point(family: str, params: Mapping[str, Any], space: Mapping[str, Dimension]) -> dict:
    """The configured values of the searched keys, as the first trial (those inside the space)."""
    current = params_class(family).from_mapping(_own(params)).as_dict()
    return {name: current[name] for name, dim in space.items() if contains(dim, current[name])}


def _objective(
    family: str,
    make_family: Callable[[], Family],
    data: TrainSet,
    space: Mapping[str, Dimension],
    pruning: bool,
) -> Callable[[optuna.Trial], float]:
    import optuna

    cls = params_class(family)

    def objective(trial: optuna.Trial) -> float:
        values = {**data.params, **{n: _suggest(trial, cls, n, d) for n, d in space.items()}}
        try:
            checked(family, values, "tuning")
        except ConfigError as exc:  # a combination the family refuses: not a model
            raise optuna.TrialPruned(str(exc)) from None
        listener = _pruning_listener(trial) if pruning else None
        trial_data = TrainSet(**{**_fields(data), "params": values, "on_validation": listener})
        return float(make_family().fit(trial_data).val_loss)

    return objective


def _pruning_listener(trial: optuna.Trial) -> Callable[[int, float], None]:
    import optuna

    def listen(step: int, value: float) -> None:
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}")

    return listen


def _suggest(trial: optuna.Trial, cls: type[MappingParams], name: str, dim: Dimension) -> Any:
    if isinstance(dim, Choices):
        return trial.suggest_categorical(name, list(dim.values))
    if cls.is_int(name):
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, float(dim.low), float(dim.high), log=dim.log)


def _result(
    study: optuna.Study,
    params: Mapping[str, Any],
    plan: TuningConfig,
    seconds: float,
    window: dict[str, dict[str, int]],
) -> TuningResult:
    from optuna.trial import TrialState

    states = [t.state for t in study.trials]
    complete = states.count(TrialState.COMPLETE)
    if complete == 0:
        raise ValueError(f"tuning: none of {len(states)} trials completed")
    best = dict(study.best_trial.params)
    return TuningResult(
        params={**params, **best},
        best=best,
        best_value=float(study.best_value),
        n_trials=len(states),
        n_complete=complete,
        n_pruned=states.count(TrialState.PRUNED),
        n_failed=states.count(TrialState.FAIL),
        seconds=seconds,
        window=window,
        plan=plan,
    )


def _own(params: Mapping[str, Any]) -> dict[str, Any]:
    from quantum_daemon.domain.params.catalog import CALIBRATION_KEY

    return {k: v for k, v in params.items() if k != CALIBRATION_KEY}


def _fields(data: TrainSet) -> dict[str, Any]:
    return {name: getattr(data, name) for name in data.__dataclass_fields__}


def _window(bars: Bars, fold: Fold) -> dict[str, dict[str, int]]:
    def span(idx: Any) -> dict[str, int]:
        return {"first_ts": int(bars.ts[int(idx[0])]), "last_ts": int(bars.ts[int(idx[-1])])}

    return {"train": span(fold.train_idx), "val": span(fold.val_idx)}
