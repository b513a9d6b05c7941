"""The tree families over several symbols: ``xgb`` and ``lgbm`` as global models.

The feature rows of every symbol (``trees.tree_data``: the same features and
warm-up rule as a single-symbol model) are stacked, with the symbol as a
categorical feature, one-hot encoded (``symbol_<code>`` columns, the code
being the symbol's position in ``symbols``, recorded in the metadata). With
the few symbols of a global model this is what LightGBM's own categorical
splits do (one-vs-rest up to ``max_cat_to_onehot`` = 4 categories), and
XGBoost takes it without its experimental categorical mode. The features are
scale-free (returns, ratios, oscillators), so they are pooled as they are;
the target is not: each symbol's horizon log return is divided by the
standard deviation of that symbol's training targets (``target_scale``), so
that a volatile symbol does not dominate the squared loss, and the
prediction is scaled back. ``p_up = Phi(mu / s)`` with ``s`` the symbol's own
validation residual spread.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from scipy.special import ndtr

from quantum_daemon.core.features import FEATURE_NAMES, build_features
from quantum_daemon.domain.bars import Bars
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.models.lgbm import LGBMFamily
from quantum_daemon.models.multi import check_sets, symbol_code
from quantum_daemon.models.trees import MIN_SIGMA, Fitted, TreeData, TreeFamily, tree_data
from quantum_daemon.models.xgb import XGBFamily


def one_hot(code: int, n_symbols: int, n_rows: int) -> np.ndarray:
    out = np.zeros((n_rows, n_symbols), dtype=np.float64)
    out[:, code] = 1.0
    return out


def with_symbol(x: np.ndarray, code: int, n_symbols: int) -> np.ndarray:
    """Feature rows with the symbol's one-hot columns appended."""
    return np.hstack([x, one_hot(code, n_symbols, x.shape[0])])


class MultiTreeFamily:
    """One booster over several symbols; see the module docstring."""

    name: ClassVar[str]
    single: ClassVar[type[TreeFamily]]

    def __init__(self) -> None:
        self._trees = self.single()  # the library calls: train, predict, save, load
        self._fitted: Fitted | None = None
        self._params: Any = None
        self._symbols: tuple[str, ...] = ()
        self._scale: dict[str, float] = {}
        self._sigma: dict[str, float] = {}
        self._seed = 0
        self._horizon = 0

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    def fit_multi(self, data: Mapping[str, TrainSet]) -> FitInfo:
        symbols = check_sets(data)
        first = data[symbols[0]]
        params = self.single.params_type.from_mapping(first.params)
        rows = {s: tree_data(data[s]) for s in symbols}
        scale = {s: _spread(rows[s].y_train) for s in symbols}
        pooled = _pooled(symbols, rows, scale)
        fitted = self._trees._train(params, first.seed, pooled, first.on_validation)
        self._fitted, self._params, self._symbols, self._scale = fitted, params, symbols, scale
        self._seed, self._horizon = first.seed, first.horizon
        self._sigma = {s: _spread(rows[s].y_val - self._raw_mu(s, rows[s].x_val)) for s in symbols}
        return FitInfo(
            best_iteration=fitted.n_trees,
            val_loss=fitted.val_loss,
            extra={
                "native_best_iteration": fitted.native_best_iteration,
                "residual_sigma": dict(self._sigma),
                "target_scale": dict(scale),
                "n_train": int(pooled.y_train.size),
                "n_val": int(pooled.y_val.size),
                "n_train_by_symbol": {s: int(rows[s].y_train.size) for s in symbols},
            },
        )

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        symbol = bars.symbol
        symbol_code(self._symbols, symbol)  # refuses a symbol it was not fitted on
        mu = self._raw_mu(symbol, build_features(bars)[idx])
        return Forecast(mu=mu, p_up=ndtr(mu / self._sigma[symbol]))

    def _raw_mu(self, symbol: str, x: np.ndarray) -> np.ndarray:
        fitted = self._require_fitted()
        code = symbol_code(self._symbols, symbol)
        scaled = self._trees._predict_raw(fitted, with_symbol(x, code, len(self._symbols)))
        return np.asarray(scaled, dtype=np.float64) * self._scale[symbol]

    def save(self, directory: Path) -> list[Path]:
        path = directory / self.single.artifact_name
        self._trees._save_booster(self._require_fitted(), path)
        return [path]

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Self:
        state = meta["model"]
        symbols = tuple(state["symbols"])
        if list(state["features"]) != [*FEATURE_NAMES, *symbol_columns(symbols)]:
            raise ValueError(f"{cls.name} artifact was fitted on another feature set")
        if [state["symbol_codes"][s] for s in symbols] != list(range(len(symbols))):
            raise ValueError(f"{cls.name} artifact's symbol codes do not match its symbols")
        model = cls()
        params = cls.single.params_type.from_mapping(state["params"])
        booster = cls.single._load_booster(directory / cls.single.artifact_name, params)
        model._fitted = Fitted(
            booster,
            int(state["n_trees"]),
            float(state["val_loss"]),
            int(state["native_best_iteration"]),
            int(getattr(params, "threads", 1)),
        )
        model._params, model._symbols = params, symbols
        model._scale = {s: float(state["target_scale"][s]) for s in symbols}
        model._sigma = {s: float(state["residual_sigma"][s]) for s in symbols}
        model._seed, model._horizon = int(state["seed"]), int(state["horizon"])
        return model

    def metadata(self) -> dict[str, Any]:
        fitted = self._require_fitted()
        return {
            "features": [*FEATURE_NAMES, *symbol_columns(self._symbols)],
            "symbols": list(self._symbols),
            "symbol_codes": {s: i for i, s in enumerate(self._symbols)},
            "symbol_encoding": "one-hot columns symbol_<code>, appended to the features",
            "params": self._params.as_dict(),
            "seed": self._seed,
            "horizon": self._horizon,
            "library_versions": self.single.library_versions(),
            "n_trees": fitted.n_trees,
            "native_best_iteration": fitted.native_best_iteration,
            "val_loss": fitted.val_loss,
            "target_scale": dict(self._scale),
            "residual_sigma": dict(self._sigma),
            "target": "horizon log return / the symbol's training target_scale",
            "p_up": "Phi(mu / residual_sigma[symbol]), from the symbol's validation window",
        }

    def _require_fitted(self) -> Fitted:
        if self._fitted is None:
            raise RuntimeError(f"{self.name} multi-symbol model is not fitted")
        return self._fitted


def symbol_columns(symbols: tuple[str, ...]) -> list[str]:
    return [f"symbol_{code}" for code in range(len(symbols))]


def _spread(values: np.ndarray) -> float:
    return max(float(np.std(values, ddof=1)) if values.size > 1 else 0.0, MIN_SIGMA)


def _pooled(
    symbols: tuple[str, ...], rows: Mapping[str, TreeData], scale: Mapping[str, float]
) -> TreeData:
    n = len(symbols)
    return TreeData(
        x_train=np.vstack([with_symbol(rows[s].x_train, i, n) for i, s in enumerate(symbols)]),
        y_train=np.concatenate([rows[s].y_train / scale[s] for s in symbols]),
        x_val=np.vstack([with_symbol(rows[s].x_val, i, n) for i, s in enumerate(symbols)]),
        y_val=np.concatenate([rows[s].y_val / scale[s] for s in symbols]),
    )


class MultiXGBFamily(MultiTreeFamily):
    name: ClassVar[str] = "xgb"
    single: ClassVar[type[TreeFamily]] = XGBFamily


class MultiLGBMFamily(MultiTreeFamily):
    name: ClassVar[str] = "lgbm"
    single: ClassVar[type[TreeFamily]] = LGBMFamily
