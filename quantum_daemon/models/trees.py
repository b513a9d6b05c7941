"""What the gradient-boosted tree families (``xgb``, ``lgbm``) share.

Both regress ``mu``, the log return over the next ``horizon`` bars, on the
engineered features of ``quantum_daemon.core.features`` (scale-free, so no scaler
is fitted), with early stopping on the validation window. ``p_up`` comes from
``mu`` through a Gaussian mapping calibrated on the validation window only:
``p_up = Phi(mu / s)``, where ``s`` is the standard deviation of the
validation residuals ``target - mu``. Training rows inside the features'
warm-up (any NaN) are dropped; at prediction time the trees route missing
values natively.

Context features (``core.context_features``, ``[features] context``): a
model given a ``FeatureContext`` before ``fit`` (``use_context``) appends
the reference-symbol and coarse-timeframe columns to the engineered ones
and records its ``ContextSpec`` in the metadata (``context``). Such a model,
loaded, needs the reference bars again before ``predict`` (``use_context``
with them; ``reference_symbols`` says which): without them ``predict``
raises ``ContextMissing``.

A subclass supplies the library calls: train with early stopping, predict,
save to and load from the library's own file format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from scipy.special import ndtr

from quantum_daemon.core.context_features import (
    ContextMissing,
    ContextSpec,
    FeatureContext,
    context_matrix,
)
from quantum_daemon.core.features import FEATURE_NAMES, build_features, horizon_log_return
from quantum_daemon.domain.bars import Bars
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.models.params import MappingParams

MIN_SIGMA = 1e-12
Listener = Callable[[int, float], None]

# The tree families' parameter classes (``domain.params.trees``) share the mixin.
TreeParamsBase = MappingParams


@dataclass(frozen=True)
class TreeData:
    """Feature rows and targets of the training and validation decisions."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclass(frozen=True)
class Fitted:
    """A trained booster and what predicting with it needs."""

    booster: Any
    n_trees: int
    val_loss: float
    native_best_iteration: int
    threads: int = 1


def tree_data(data: TrainSet, context: FeatureContext | None = None) -> TreeData:
    """Rows of the train and validation decisions; warm-up train rows dropped."""
    features = tree_features(data.bars, context)
    target = horizon_log_return(data.bars.close, data.horizon)
    train = data.train_idx[_complete(features[data.train_idx], target[data.train_idx])]
    val = data.val_idx[~np.isnan(target[data.val_idx])]
    if train.size == 0 or val.size == 0:
        raise ValueError(f"no usable rows: {train.size} train, {val.size} validation")
    return TreeData(features[train], target[train], features[val], target[val])


def tree_features(bars: Bars, context: FeatureContext | None) -> np.ndarray:
    """The engineered features, then the context features when there is a context."""
    features = build_features(bars)
    if context is None or context.spec.empty:
        return features
    return np.hstack([features, context_matrix(bars, context.spec, context.reference)])


def _threads(params: Any) -> int:
    return int(getattr(params, "threads", 1))


def _complete(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ~np.isnan(x).any(axis=1) & ~np.isnan(y)


class TreeFamily:
    """Shared fit / predict / save / load of a tree family; see the module docstring."""

    name: ClassVar[str]
    artifact_name: ClassVar[str]
    params_type: ClassVar[type[TreeParamsBase]]

    def __init__(self) -> None:
        self._fitted: Fitted | None = None
        self._params: TreeParamsBase | None = None
        self._sigma = 1.0
        self._seed = 0
        self._horizon = 0
        self._context: FeatureContext | None = None

    # -- what a library subclass implements -----------------------------------------------

    def _train(
        self, params: Any, seed: int, rows: TreeData, listener: Listener | None = None
    ) -> Fitted:
        """Train with early stopping, calling ``listener(iteration, val_mse)``."""
        raise NotImplementedError

    def _predict_raw(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _save_booster(self, fitted: Fitted, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _load_booster(cls, path: Path, params: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        raise NotImplementedError

    # -- context features -------------------------------------------------------------------

    def use_context(self, context: FeatureContext) -> None:
        """Before ``fit``: the spec and reference bars to fit with. After
        ``fit`` or ``load``: the reference bars to predict with (the fitted
        spec stays)."""
        if self._fitted is None:
            self._context = FeatureContext(context.spec, dict(context.reference))
        elif self._context is not None:  # fitted without context: nothing to add
            self._context = FeatureContext(self._context.spec, dict(context.reference))

    @property
    def reference_symbols(self) -> tuple[str, ...]:
        """The symbols whose bars ``predict`` needs (none without context)."""
        return () if self._context is None else self._context.spec.reference_symbols

    def _spec(self) -> ContextSpec:
        return ContextSpec() if self._context is None else self._context.spec

    def feature_names(self) -> list[str]:
        return [*FEATURE_NAMES, *self._spec().feature_names()]

    # -- the family interface -------------------------------------------------------------

    def fit(self, data: TrainSet) -> FitInfo:
        params = self.params_type.from_mapping(data.params)
        if self._context is not None:
            narrowed = self._context.spec.for_series(data.bars.symbol, data.bars.tf)
            self._context = FeatureContext(narrowed, self._context.reference)
        rows = tree_data(data, self._context)
        fitted = self._train(params, data.seed, rows, data.on_validation)
        residual = rows.y_val - self._predict_raw(fitted, rows.x_val)
        self._fitted, self._params = fitted, params
        self._seed, self._horizon = data.seed, data.horizon
        self._sigma = max(float(np.std(residual, ddof=1)) if residual.size > 1 else 0.0, MIN_SIGMA)
        return FitInfo(
            best_iteration=fitted.n_trees,
            val_loss=fitted.val_loss,
            extra={
                "native_best_iteration": fitted.native_best_iteration,
                "residual_sigma": self._sigma,
                "n_train": int(rows.y_train.size),
                "n_val": int(rows.y_val.size),
            },
        )

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        fitted = self._require_fitted()
        mu = self._predict_raw(fitted, self._features(bars)[idx]).astype(np.float64)
        return Forecast(mu=mu, p_up=ndtr(mu / self._sigma))

    def _features(self, bars: Bars) -> np.ndarray:
        missing = [s for s in self.reference_symbols if s not in self._reference()]
        if missing:
            raise ContextMissing(
                f"{self.name} was fitted with context features of {missing} "
                f"and was given no {bars.tf} bars of them"
            )
        return tree_features(bars, self._context)

    def _reference(self) -> Mapping[str, Bars]:
        return {} if self._context is None else self._context.reference

    def save(self, directory: Path) -> list[Path]:
        path = directory / self.artifact_name
        self._save_booster(self._require_fitted(), path)
        return [path]

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Self:
        state = meta["model"]
        model = cls()
        if "context" in state:
            model._context = FeatureContext(ContextSpec.from_dict(state["context"]))
        if list(state["features"]) != model.feature_names():
            raise ValueError(f"{cls.name} artifact was fitted on another feature set")
        params = cls.params_type.from_mapping(state["params"])
        booster = cls._load_booster(directory / cls.artifact_name, params)
        model._fitted = Fitted(
            booster,
            int(state["n_trees"]),
            float(state["val_loss"]),
            int(state["native_best_iteration"]),
            _threads(params),
        )
        model._params, model._sigma = params, float(state["residual_sigma"])
        model._seed, model._horizon = int(state["seed"]), int(state["horizon"])
        return model

    def metadata(self) -> dict[str, Any]:
        fitted = self._require_fitted()
        assert self._params is not None
        context = {} if self._spec().empty else {"context": self._spec().to_dict()}
        return {
            "features": self.feature_names(),
            **context,
            "params": self._params.as_dict(),
            "seed": self._seed,
            "horizon": self._horizon,
            "library_versions": self.library_versions(),
            "n_trees": fitted.n_trees,
            "native_best_iteration": fitted.native_best_iteration,
            "val_loss": fitted.val_loss,
            "residual_sigma": self._sigma,
            "p_up": "Phi(mu / residual_sigma), residual_sigma from the validation window",
        }

    def _require_fitted(self) -> Fitted:
        if self._fitted is None:
            raise RuntimeError(f"{self.name} model is not fitted")
        return self._fitted
