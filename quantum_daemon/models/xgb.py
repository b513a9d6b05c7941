"""The ``xgb`` family: XGBoost regression of the horizon log return.

Native early stopping on the validation window; the artifact is the booster
in XGBoost's UBJSON format (``model.ubj``), holding every tree up to the
best iteration's stop (prediction uses the trees up to the best one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xgboost as xgb

from quantum_daemon.domain.params.trees import XGBParams
from quantum_daemon.models.trees import Fitted, Listener, TreeData, TreeFamily, TreeParamsBase

__all__ = ["XGBFamily", "XGBParams"]


class XGBFamily(TreeFamily):
    name: ClassVar[str] = "xgb"
    artifact_name: ClassVar[str] = "model.ubj"
    params_type: ClassVar[type[TreeParamsBase]] = XGBParams

    def _train(
        self, params: Any, seed: int, rows: TreeData, listener: Listener | None = None
    ) -> Fitted:
        dtrain = xgb.DMatrix(rows.x_train, label=rows.y_train, nthread=params.threads)
        dval = xgb.DMatrix(rows.x_val, label=rows.y_val, nthread=params.threads)
        history: dict[str, Any] = {}
        booster = xgb.train(
            _booster_params(params, seed),
            dtrain,
            num_boost_round=params.num_boost_round,
            evals=[(dval, "val")],
            early_stopping_rounds=params.early_stopping_rounds,
            evals_result=history,
            verbose_eval=False,
            callbacks=[] if listener is None else [_Listening(listener)],
        )
        best = int(booster.best_iteration)
        val_mse = float(history["val"]["rmse"][best]) ** 2
        return Fitted(booster, best + 1, val_mse, best, params.threads)

    def _predict_raw(self, fitted: Fitted, x: np.ndarray) -> np.ndarray:
        data = xgb.DMatrix(x, nthread=fitted.threads)
        return np.asarray(fitted.booster.predict(data, iteration_range=(0, fitted.n_trees)))

    def _save_booster(self, fitted: Fitted, path: Path) -> None:
        fitted.booster.save_model(str(path))

    @classmethod
    def _load_booster(cls, path: Path, params: Any) -> Any:
        booster = xgb.Booster(params={"nthread": params.threads})
        booster.load_model(str(path))
        return booster

    @classmethod
    def library_versions(cls) -> dict[str, str]:
        return {"xgboost": xgb.__version__, "numpy": np.__version__}


class _Listening(xgb.callback.TrainingCallback):
    """Hands each round's validation MSE to a listener (which may raise to stop)."""

    def __init__(self, listener: Listener) -> None:
        super().__init__()
        self.listener = listener

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.listener(epoch, float(evals_log["val"]["rmse"][-1]) ** 2)
        return False


def _booster_params(params: XGBParams, seed: int) -> dict[str, Any]:
    return {
        "objective": "reg:squarederror",
        "eval_metric": "rmse",
        "tree_method": "hist",
        "eta": params.learning_rate,
        "max_depth": params.max_depth,
        "min_child_weight": params.min_child_weight,
        "subsample": params.subsample,
        "colsample_bytree": params.colsample_bytree,
        "lambda": params.reg_lambda,
        "nthread": params.threads,
        "seed": seed,
    }
