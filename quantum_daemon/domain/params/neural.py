"""Hyper-parameters of the torch families (``nhits``, ``patchtst``) and their
search spaces, apart from ``models.neural`` so that the config can check them
without importing torch. The architecture rules that depend on several keys
(one downsample ratio per pooling kernel, ``d_model`` a multiple of
``n_heads``...) are checked here too, so that a bad table fails at config
load, not in a worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from quantum_daemon.domain.config_schema import (
    Check,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from quantum_daemon.domain.params.base import Choices, MappingParams, Range, Space

EXOGENOUS = ("range", "volume")  # the channels beside the return (models.neural.CHANNELS)
DROPOUT = Check(lambda v: 0 <= v < 1, "in [0, 1)")
KNOWN_CHANNELS = Check(
    lambda v: all(c in EXOGENOUS for c in v) and len(set(v)) == len(v),
    f"distinct channels among {list(EXOGENOUS)}",
)
AT_LEAST_ONE = Check(lambda v: len(v) > 0 and min(v) >= 1, "a non-empty list of integers >= 1")
Channels = Annotated[tuple[str, ...], KNOWN_CHANNELS]
Dropout = Annotated[float, DROPOUT]
Ratios = Annotated[tuple[int, ...], AT_LEAST_ONE]


@dataclass(frozen=True)
class NHiTSParams(MappingParams):
    """Daemon defaults: the paper's shape, shrunk to train in seconds on 2 CPU cores."""

    lookback: PositiveInt = 120  # the paper's 5 x horizon for the default horizon of 24
    exogenous: Channels = ("range", "volume")
    pool_kernels: Ratios = (8, 4, 1)  # stacks see 15, 30 and 120 points
    downsample: Ratios = (12, 4, 1)  # 2, 6 and 24 forecast knots at h = 24
    hidden: PositiveInt = 128  # paper: 512; 2,000 bars of returns cannot feed more
    n_layers: PositiveInt = 2
    dropout: Dropout = 0.0
    loss: Literal["mae", "mse"] = "mae"  # paper: MAE, robust to return outliers
    learning_rate: PositiveFloat = 1e-3
    batch_size: PositiveInt = 128
    max_steps: PositiveInt = 300
    eval_every: PositiveInt = 20
    patience: PositiveInt = 5
    min_improvement: NonNegativeFloat = 0.005  # gains under 0.5% are noise on returns: stop
    grad_clip: NonNegativeFloat = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: NonNegativeInt = 1  # as training.worker_threads; 0 keeps the process's

    search_space: ClassVar[Space] = {
        "lookback": Choices((72, 120, 168)),
        "hidden": Choices((64, 128, 256)),
        "n_layers": Range(1, 3),
        "dropout": Range(0.0, 0.3),
        "learning_rate": Range(3e-4, 3e-3, log=True),
    }

    def __post_init__(self) -> None:
        if len(self.pool_kernels) != len(self.downsample):
            raise ValueError("pool_kernels and downsample need one entry per stack")
        if max(self.pool_kernels) > self.lookback:
            raise ValueError("a pooling kernel is longer than lookback")


@dataclass(frozen=True)
class PatchTSTParams(MappingParams):
    """Daemon defaults: the paper's small model (ETTh-sized data), shrunk to
    train in seconds on 2 CPU cores."""

    lookback: PositiveInt = 96  # four days of 1h bars: 12 patches of 16 with stride 8
    exogenous: Channels = ()  # channel independence: other channels cannot inform returns
    patch_len: PositiveInt = 16
    stride: PositiveInt = 8
    d_model: PositiveInt = 16
    n_heads: PositiveInt = 4
    n_layers: PositiveInt = 2
    d_ff: PositiveInt = 32
    dropout: Dropout = 0.3
    loss: Literal["mae", "mse"] = "mse"  # paper: MSE
    learning_rate: PositiveFloat = 3e-3  # paper: 1e-4 over 100 epochs; we have ~200 steps
    batch_size: PositiveInt = 64
    max_steps: PositiveInt = 200
    eval_every: PositiveInt = 10
    patience: PositiveInt = 5
    min_improvement: NonNegativeFloat = 0.005  # gains under 0.5% are noise on returns: stop
    grad_clip: NonNegativeFloat = 1.0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: NonNegativeInt = 1

    search_space: ClassVar[Space] = {
        "lookback": Choices((64, 96, 144)),
        "d_model": Choices((16, 32, 64)),  # every choice a multiple of every n_heads choice
        "n_heads": Choices((2, 4)),
        "n_layers": Range(1, 3),
        "dropout": Range(0.1, 0.5),
        "learning_rate": Range(1e-3, 1e-2, log=True),
    }

    def __post_init__(self) -> None:
        if self.lookback < self.patch_len:
            raise ValueError("lookback must be at least patch_len")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
