"""Hyper-parameters of the families that trade a rule on costed returns
(``evo_model``, ``rl_sizer``) and their search spaces. Both optimise after
costs, so their ``fee_bps`` and ``slippage_bps`` are ``evaluation_keys``: the
training pipeline sets them from ``[evaluation]`` (a rule optimised at other
costs than it is judged at would be judged on a different game)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from quantum_daemon.domain.config_schema import (
    Check,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from quantum_daemon.domain.params.base import MappingParams, Range, Space

COST_KEYS = frozenset({"fee_bps", "slippage_bps"})
DEFAULT_FEATURES = (
    "ret_1", "ret_4", "ret_24", "rsi_14", "sma_dist_24", "bb_position_20",
    "di_diff_14", "volume_z_24", "rvol_ratio_24_96",
)  # fmt: skip
# The names themselves are checked against the feature set when the family
# fits (``models.evo``): the feature code needs TA-Lib, which the daemon never loads.
FEATURE_LIST = Check(
    lambda v: len(v) > 0 and len(set(v)) == len(v), "a non-empty list of distinct feature names"
)
DISCOUNT = Check(lambda v: 0 < v <= 1, "in (0, 1]")


@dataclass(frozen=True)
class EvoParams(MappingParams):
    # a handful: each weight must earn its place
    features: Annotated[tuple[str, ...], FEATURE_LIST] = DEFAULT_FEATURES
    max_evaluations: PositiveInt = 3000  # rule evaluations; a few seconds on one core
    population: NonNegativeInt = 0  # 0: CMA-ES's default 4 + 3 ln(dimension)
    sigma0: PositiveFloat = 0.3  # initial step: a third of the weights' range
    patience: PositiveInt = 20  # generations without a better validation Sharpe before stopping
    max_threshold: PositiveFloat = 3.0  # tau in z units; above this the rule would never trade
    weight_penalty: NonNegativeFloat = 1e-4  # tie-breaker, far below a meaningful Sharpe gap
    fee_bps: NonNegativeFloat = 10.0  # set from [evaluation] fee_bps
    slippage_bps: NonNegativeFloat = 2.0  # and slippage_bps
    prior_count: NonNegativeFloat = 10.0  # pseudo-bars of "no information" per position's forecast

    evaluation_keys: ClassVar[frozenset[str]] = COST_KEYS
    search_space: ClassVar[Space] = {
        "sigma0": Range(0.1, 0.6),
        "max_threshold": Range(1.0, 4.0),
        "weight_penalty": Range(1e-5, 1e-2, log=True),
        "prior_count": Range(1.0, 50.0, log=True),
    }


@dataclass(frozen=True)
class SizerParams(MappingParams):
    total_timesteps: PositiveInt = 20_480  # tens of seconds on one core
    eval_every: PositiveInt = 2_048  # timesteps between validation checks (a multiple of n_steps)
    patience: PositiveInt = 4  # checks without a better validation Sharpe before stopping
    n_steps: PositiveInt = 512  # rollout length per PPO update
    batch_size: PositiveInt = 64  # divides n_steps
    n_epochs: PositiveInt = 5
    learning_rate: PositiveFloat = 3e-4
    gamma: Annotated[float, DISCOUNT] = 0.9  # a bar's reward matters for a few bars only
    net_arch: Annotated[tuple[int, ...], Check(lambda v: all(n >= 1 for n in v), "sizes >= 1")] = (
        32,
        32,
    )  # five inputs: a small MLP is plenty
    episode_length: PositiveInt = 256
    risk_penalty: NonNegativeFloat = 0.0  # reward = net - risk_penalty * net^2, in units of vol_ref
    fee_bps: NonNegativeFloat = 10.0  # set from [evaluation] fee_bps
    slippage_bps: NonNegativeFloat = 2.0  # and slippage_bps
    threads: PositiveInt = 1

    evaluation_keys: ClassVar[frozenset[str]] = COST_KEYS
    search_space: ClassVar[Space] = {
        "learning_rate": Range(1e-4, 1e-3, log=True),
        "gamma": Range(0.5, 0.99),
        "n_epochs": Range(3, 10),
        "risk_penalty": Range(0.0, 2.0),
    }

    def __post_init__(self) -> None:
        if self.n_steps % self.batch_size or self.eval_every % self.n_steps:
            raise ValueError("batch_size must divide n_steps, and n_steps divide eval_every")
        if self.total_timesteps < self.eval_every:
            raise ValueError("total_timesteps must be at least eval_every")
