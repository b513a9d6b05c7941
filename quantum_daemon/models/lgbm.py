"""The ``lgbm`` family: LightGBM regression of the horizon log return.

Native early stopping (the ``early_stopping`` callback) on the validation
window; deterministic for a seed (``deterministic``, row-wise histograms,
fixed thread count); the artifact is LightGBM's text model format
(``model.txt``) holding the trees up to the best iteration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np

from quantum_daemon.domain.params.trees import LGBMParams
from quantum_daemon.models.trees import Fitted, Listener, TreeData, TreeFamily, TreeParamsBase

__all__ = ["LGBMFamily", "LGBMParams"]


class LGBMFamily(TreeFamily):
    name: ClassVar[str] = "lgbm"
    artifact_name: ClassVar[str] = "model.txt"
    params_type: ClassVar[type[TreeParamsBase]] = LGBMParams

    def _train(
        self, params: Any, seed: int, rows: TreeData, listener: Listener | None = None
    ) -> Fitted:
        booster_params = _booster_params(params, seed)
        train = lgb.Dataset(rows.x_train, label=rows.y_train, params=booster_params)
        val = lgb.Dataset(rows.x_val, label=rows.y_val, reference=train, params=booster_params)
        history: dict[str, Any] = {}
        booster = lgb.train(
            booster_params,
            train,
            num_boost_round=params.num_boost_round,
            valid_sets=[val],
            valid_names=["val"],
            callbacks=[
                lgb.early_stopping(params.early_stopping_rounds, verbose=False),
                lgb.record_evaluation(history),
                *([] if listener is None else [_listening(listener)]),
            ],
        )
        best = int(booster.best_iteration) or booster.current_iteration()
        val_mse = float(history["val"]["l2"][best - 1])
        return Fitted(booster, best, val_mse, int(booster.best_iteration), params.threads)

    def _predict_raw(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        return np.asarray(
            fitted.booster.predict(x, num_iteration=fitted.n_trees, num_threads=fitted.threads)
        )

    def _save_booster(self, fitted: Fitted, path: Path) -> None:
        fitted.booster.save_model(str(path), num_iteration=fitted.n_trees)

    @classmethod
    def _load_booster(cls, path: Path, params: Any) -> Any:
        return lgb.Booster(model_file=str(path))

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        return {"lightgbm": lgb.__version__, "numpy": np.__version__}


def _listening(listener: Listener) -> Any:
    """A callback handing each round's validation l2 to a listener (which may raise)."""

    def callback(env: Any) -> None:
        listener(int(env.iteration), float(env.evaluation_result_list[0][2]))

    return callback


def _booster_params(params: LGBMParams, seed: int) -> dict[str, Any]:
    return {
        "objective": "regression",
        "metric": "l2",
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "max_depth": params.max_depth,
        "min_data_in_leaf": params.min_data_in_leaf,
        "feature_fraction": params.feature_fraction,
        "bagging_fraction": params.bagging_fraction,
        "bagging_freq": params.bagging_freq,
        "lambda_l2": params.lambda_l2,
        "num_threads": params.threads,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    }
