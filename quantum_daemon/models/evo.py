"""The ``evo_model`` family: a trading rule whose parameters CMA-ES evolves.

The rule reads a handful of engineered features (``quantum_daemon.core.features``),
z-scored with the training window's mean and standard deviation, and takes
a position at each bar's close:

    s = sum_i w_i z_i        position = +1 if s > tau, -1 if s < -tau, else 0

(flat inside the features' warm-up). CMA-ES (Hansen's ``cma``, seeded,
box-bounded: ``w_i`` in [-1, 1], ``tau`` in [0, ``max_threshold``]) minimizes
minus the per-bar Sharpe ratio of the rule's costed returns on the training
window, the evaluator's backtest and Sharpe (a position decided at a close
earns the next bar's return; fees and slippage on every change), plus a tiny
weight penalty that breaks ties between rules with the same positions. After
every generation the generation's best rule is judged on the validation
window; the rule kept is the best there, and the search stops after
``patience`` generations without a better one (or ``max_evaluations``).

The forecast that goes with a position is what the rule's positions meant on
the validation window: for each of the three positions, ``mu`` is the mean
horizon log return of the validation bars where the rule held it and
``p_up`` the share of those that went up, both shrunk toward no information
(0 and 0.5) by ``prior_count`` pseudo-bars. The artifact is ``evo.json``:
plain numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from quantum_daemon.core.evaluation.backtest import cost_rate, next_bar_returns, run_backtest
from quantum_daemon.core.evaluation.performance import sharpe_ratio
from quantum_daemon.core.features import FEATURE_NAMES, build_features, horizon_log_return
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.params.rules import DEFAULT_FEATURES
from quantum_daemon.domain.params.rules import EvoParams as EvoParamsSchema
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet

__all__ = ["DEFAULT_FEATURES", "EvoFamily", "EvoParams"]

ARTIFACT = "evo.json"
POSITIONS = (-1.0, 0.0, 1.0)


class EvoParams(EvoParamsSchema):
    """``domain.params.rules.EvoParams`` (types and ranges, checked at config
    load), and the feature names checked against the feature set."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "params") -> Self:
        params = super().from_mapping(values, where)
        missing = sorted(set(params.features) - set(FEATURE_NAMES))
        if missing:
            raise ValueError(f"config key '{where}.features': unknown features {missing}")
        return params


@dataclass(frozen=True)
class Rule:
    """The evolved rule and its per-position forecast table."""

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    threshold: float
    mu_by_position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    p_up_by_position: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def score(self, x: np.ndarray) -> np.ndarray:
        """The rule's score per row of raw features; NaN inside the warm-up."""
        return ((x - self.mean) / self.std) @ self.weights

    def positions(self, x: np.ndarray) -> np.ndarray:
        s = self.score(x)
        out = np.where(s > self.threshold, 1.0, np.where(s < -self.threshold, -1.0, 0.0))
        return np.where(np.isnan(s), 0.0, out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weights": self.weights.tolist(),
            "threshold": self.threshold,
            "mu_by_position": list(self.mu_by_position),
            "p_up_by_position": list(self.p_up_by_position),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rule:
        return cls(
            features=tuple(d["features"]),
            mean=np.asarray(d["mean"], dtype=np.float64),
            std=np.asarray(d["std"], dtype=np.float64),
            weights=np.asarray(d["weights"], dtype=np.float64),
            threshold=float(d["threshold"]),
            mu_by_position=_triple(d["mu_by_position"]),
            p_up_by_position=_triple(d["p_up_by_position"]),
        )


@dataclass(frozen=True)
class Window:
    """Feature rows of one window's decisions and the next-bar returns they earn."""

    x: np.ndarray
    asset_returns: np.ndarray


@dataclass(frozen=True)
class SearchResult:
    weights: np.ndarray
    threshold: float
    train_sharpe: float
    val_sharpe: float
    generation: int
    evaluations: int
    generations: int


@dataclass
class _Search:
    """CMA-ES over (weights, threshold), selecting on the validation window."""

    params: EvoParams
    rate: float
    train: Window
    val: Window
    template: Rule
    best: SearchResult | None = field(default=None)

    def rule(self, theta: np.ndarray) -> Rule:
        return dataclasses.replace(self.template, weights=theta[:-1], threshold=float(theta[-1]))

    def sharpe(self, theta: np.ndarray, window: Window) -> float:
        positions = self.rule(theta).positions(window.x)
        return sharpe_ratio(run_backtest(positions, window.asset_returns, self.rate).net, 1.0)

    def objective(self, theta: np.ndarray) -> float:
        penalty = self.params.weight_penalty * float(theta[:-1] @ theta[:-1])
        return -self.sharpe(theta, self.train) + penalty

    def run(self, seed: int) -> SearchResult:
        import cma

        es = cma.CMAEvolutionStrategy(self.start(), self.params.sigma0, self.options(seed))
        stale, generation = 0, 0
        while not es.stop() and stale < self.params.patience:
            candidates = [np.asarray(c) for c in es.ask()]
            losses = [self.objective(c) for c in candidates]
            es.tell(candidates, losses)
            generation += 1
            improved = self.consider(candidates[int(np.argmin(losses))], generation)
            stale = 0 if improved else stale + 1
        if self.best is None:
            raise RuntimeError("CMA-ES stopped before its first generation")
        return dataclasses.replace(self.best, evaluations=es.countevals, generations=generation)

    def consider(self, theta: np.ndarray, generation: int) -> bool:
        """Keep the generation's best rule if it beats the kept one on validation."""
        val = self.sharpe(theta, self.val)
        if self.best is not None and val <= self.best.val_sharpe:
            return False
        train = self.sharpe(theta, self.train)
        self.best = SearchResult(theta[:-1].copy(), float(theta[-1]), train, val, generation, 0, 0)
        return True

    def start(self) -> np.ndarray:
        k = len(self.params.features)
        return np.concatenate([np.zeros(k), [min(0.5, self.params.max_threshold)]])

    def options(self, seed: int) -> dict[str, Any]:
        k = len(self.params.features)
        options: dict[str, Any] = {
            "seed": seed + 1,  # cma reads 0 as "seed from the clock"
            "bounds": [[-1.0] * k + [0.0], [1.0] * k + [self.params.max_threshold]],
            "maxfevals": self.params.max_evaluations,
            "verbose": -9,  # no console output, no warnings printed
            "verb_log": 0,  # no outcmaes/ files
            "verb_disp": 0,
        }
        if self.params.population:
            options["popsize"] = self.params.population
        return options


class EvoFamily:
    """``evo_model``: see the module docstring."""

    name: ClassVar[str] = "evo_model"

    def __init__(self) -> None:
        self._rule: Rule | None = None
        self._params = EvoParams()
        self._seed = 0
        self._horizon = 0
        self._fit_record: dict[str, Any] = {}

    def fit(self, data: TrainSet) -> FitInfo:
        params = EvoParams.from_mapping(data.params)
        features = _select(build_features(data.bars), params.features)
        template = _standardized_template(params.features, features[data.train_idx])
        search = _Search(
            params,
            cost_rate(params.fee_bps, params.slippage_bps),
            _window(features, data.bars.close, data.train_idx),
            _window(features, data.bars.close, data.val_idx),
            template,
        )
        found = search.run(data.seed)
        rule = search.rule(np.concatenate([found.weights, [found.threshold]]))
        target = horizon_log_return(data.bars.close, data.horizon)
        self._rule = _with_forecast_table(
            rule, features[data.val_idx], target[data.val_idx], params
        )
        self._params, self._seed, self._horizon = params, data.seed, data.horizon
        self._fit_record = {
            "train_sharpe": found.train_sharpe,
            "val_sharpe": found.val_sharpe,
            "evaluations": found.evaluations,
            "generations": found.generations,
        }
        return FitInfo(
            best_iteration=found.generation,
            val_loss=-found.val_sharpe,
            extra=dict(self._fit_record),
        )

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        rule = self._require_rule()
        x = _select(build_features(bars), rule.features)[idx]
        positions = rule.positions(x)
        slot = (positions + 1).astype(np.int64)  # -1, 0, +1 -> 0, 1, 2
        mu = np.asarray(rule.mu_by_position)[slot]
        p_up = np.asarray(rule.p_up_by_position)[slot]
        return Forecast(mu=mu, p_up=p_up, position=positions)

    def save(self, directory: Path) -> list[Path]:
        path = directory / ARTIFACT
        path.write_text(json.dumps(self.metadata(), indent=2, sort_keys=True))
        return [path]

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Self:
        state = json.loads((directory / ARTIFACT).read_text())
        model = cls()
        model._rule = Rule.from_dict(state["rule"])
        model._params = EvoParams.from_mapping(state["params"])
        model._seed, model._horizon = int(state["seed"]), int(state["horizon"])
        model._fit_record = dict(state["fit"])
        return model

    def metadata(self) -> dict[str, Any]:
        import cma

        return {
            "rule": self._require_rule().to_dict(),
            "features": list(self._params.features),
            "params": self._params.as_dict(),
            "seed": self._seed,
            "horizon": self._horizon,
            "fit": self._fit_record,
            "library_versions": {"cma": cma.__version__, "numpy": np.__version__},
        }

    def _require_rule(self) -> Rule:
        if self._rule is None:
            raise RuntimeError("evo_model is not fitted")
        return self._rule


def _select(features: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return features[:, [FEATURE_NAMES.index(n) for n in names]]


def _window(features: np.ndarray, close: np.ndarray, idx: np.ndarray) -> Window:
    return Window(features[idx], next_bar_returns(close, idx))


def _standardized_template(names: tuple[str, ...], x_train: np.ndarray) -> Rule:
    complete = x_train[~np.isnan(x_train).any(axis=1)]
    if complete.shape[0] < 2:
        raise ValueError(f"only {complete.shape[0]} training rows outside the feature warm-up")
    mean, std = complete.mean(axis=0), complete.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return Rule(names, mean, std, np.zeros(len(names)), 0.0)


def _with_forecast_table(
    rule: Rule, x_val: np.ndarray, target: np.ndarray, params: EvoParams
) -> Rule:
    positions = rule.positions(x_val)
    known = ~np.isnan(target)
    mus, ps = [], []
    for held in POSITIONS:
        outcome = target[known & (positions == held)]
        n = outcome.size + params.prior_count
        mus.append(float(outcome.sum() / n))
        ps.append(float((np.sum(outcome > 0) + 0.5 * params.prior_count) / n))
    return dataclasses.replace(rule, mu_by_position=_triple(mus), p_up_by_position=_triple(ps))


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (a, b, c)):
        raise ValueError("non-finite forecast table")
    return a, b, c
