"""Hyper-parameters of the gradient-boosted tree families (``xgb``, ``lgbm``)
and their search spaces. Defaults: shallow trees on many bars, because
returns are mostly noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from quantum_daemon.domain.config_schema import (
    Check,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)
from quantum_daemon.domain.params.base import MappingParams, Range, Space

UNIT = Check(lambda v: 0 < v <= 1, "in (0, 1]")
Share = Annotated[float, UNIT]


@dataclass(frozen=True)
class XGBParams(MappingParams):
    num_boost_round: PositiveInt = 400  # an upper bound: early stopping picks the count
    early_stopping_rounds: PositiveInt = 30  # returns are noisy; give the val loss room to turn
    learning_rate: PositiveFloat = 0.05
    max_depth: PositiveInt = 3  # shallow: interactions of a few features, little room to memorize
    min_child_weight: NonNegativeFloat = 20.0  # leaves must cover many bars
    subsample: Share = 0.8
    colsample_bytree: Share = 0.8
    reg_lambda: NonNegativeFloat = 1.0
    threads: PositiveInt = 1  # the worker pool pins threads (XGBoost nthread)

    search_space: ClassVar[Space] = {
        "learning_rate": Range(0.01, 0.3, log=True),
        "max_depth": Range(2, 6),
        "min_child_weight": Range(1.0, 200.0, log=True),
        "subsample": Range(0.5, 1.0),
        "colsample_bytree": Range(0.5, 1.0),
        "reg_lambda": Range(0.01, 10.0, log=True),
    }


@dataclass(frozen=True)
class LGBMParams(MappingParams):
    num_boost_round: PositiveInt = 400  # an upper bound: early stopping picks the count
    early_stopping_rounds: PositiveInt = 30  # returns are noisy; give the val loss room to turn
    learning_rate: PositiveFloat = 0.05
    num_leaves: Annotated[int, Check(lambda v: v >= 2, ">= 2")] = 8  # about a depth-3 tree
    max_depth: PositiveInt = 3
    min_data_in_leaf: PositiveInt = 50  # leaves must cover many bars
    feature_fraction: Share = 0.8
    bagging_fraction: Share = 0.8
    bagging_freq: Annotated[int, Check(lambda v: v >= 0, ">= 0 (0: no bagging)")] = 1
    lambda_l2: NonNegativeFloat = 1.0
    threads: PositiveInt = 1  # the worker pool pins threads (LightGBM num_threads)

    search_space: ClassVar[Space] = {
        "learning_rate": Range(0.01, 0.3, log=True),
        "num_leaves": Range(4, 64, log=True),
        "max_depth": Range(2, 8),
        "min_data_in_leaf": Range(10, 300, log=True),
        "feature_fraction": Range(0.5, 1.0),
        "bagging_fraction": Range(0.5, 1.0),
        "lambda_l2": Range(0.01, 10.0, log=True),
    }
