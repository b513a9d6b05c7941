"""N-HiTS (Challu et al., AAAI 2023) as a plain ``nn.Module``.

A forecast is the sum of the outputs of a chain of MLP blocks grouped in
stacks. Each block

1. max-pools its input with its own kernel (multi-rate input sampling: early
   stacks see a coarse view of the lookback, the last one the full rate),
2. maps the pooled window through an MLP to a full-resolution backcast of the
   lookback and a few forecast coefficients ("knots"),
3. interpolates the knots up to the horizon (hierarchical interpolation: the
   stack's expressiveness ratio sets how many knots, so early stacks can only
   produce smooth, low-frequency forecasts).

The next block sees the residual (input minus backcast); the forecasts add up.
As in both official implementations, the sum starts from the last observed
value of each target channel (the naive level), so blocks learn corrections.

Shapes: the input is ``(batch, n_series + n_exog, input_size)`` where the
first ``n_series`` channels are the targets (backcast and forecast) and the
rest are exogenous inputs that every block sees unchanged. The output is
``(batch, n_series, horizon)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NHiTSConfig:
    """Architecture of one N-HiTS network (one stack = ``blocks_per_stack`` blocks)."""

    input_size: int
    horizon: int
    n_series: int = 1
    n_exog: int = 0
    # Paper Table: 3 stacks, pooling kernels shrinking to 1 (the last stack
    # sees the full-rate input), ratios shrinking to 1 (the last stack may
    # forecast at full resolution).
    pool_kernels: tuple[int, ...] = (2, 2, 1)
    downsample: tuple[int, ...] = (24, 12, 1)
    blocks_per_stack: int = 1
    hidden: int = 512
    n_layers: int = 2
    dropout: float = 0.0
    pooling: Literal["max", "avg"] = "max"
    interpolation: Literal["linear", "nearest"] = "linear"
    naive_level: bool = True

    def __post_init__(self) -> None:
        if len(self.pool_kernels) != len(self.downsample):
            raise ValueError("pool_kernels and downsample need one entry per stack")
        if min(self.pool_kernels) < 1 or min(self.downsample) < 1:
            raise ValueError("pooling kernels and downsample ratios must be >= 1")
        if max(self.pool_kernels) > self.input_size:
            raise ValueError("a pooling kernel is longer than the input window")
        if self.input_size < 1 or self.horizon < 1 or self.n_series < 1:
            raise ValueError("input_size, horizon and n_series must be >= 1")

    @property
    def n_stacks(self) -> int:
        return len(self.pool_kernels)

    def pooled_size(self, stack: int) -> int:
        """Length of the lookback after the stack's pooling (ceil mode)."""
        return math.ceil(self.input_size / self.pool_kernels[stack])

    def n_knots(self, stack: int) -> int:
        """Forecast coefficients of the stack: ceil(horizon / ratio) (paper, eq. 3)."""
        return math.ceil(self.horizon / self.downsample[stack])


class NHiTSBlock(nn.Module):
    """Pool, MLP, split into backcast and knots, interpolate knots to the horizon."""

    def __init__(self, config: NHiTSConfig, stack: int) -> None:
        super().__init__()
        self.config = config
        self.kernel = config.pool_kernels[stack]
        self.n_knots = config.n_knots(stack)
        n_in = (config.n_series + config.n_exog) * config.pooled_size(stack)
        n_out = config.n_series * (config.input_size + self.n_knots)
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(config.n_layers):
            layers += [nn.Linear(width, config.hidden), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = config.hidden
        layers.append(nn.Linear(width, n_out))
        self.mlp = nn.Sequential(*layers)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == 1:
            return x
        if self.config.pooling == "max":
            return F.max_pool1d(x, self.kernel, self.kernel, ceil_mode=True)
        return F.avg_pool1d(x, self.kernel, self.kernel, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        theta = self.mlp(self.pool(x).flatten(1))
        theta = theta.view(x.shape[0], cfg.n_series, cfg.input_size + self.n_knots)
        backcast, knots = theta[..., : cfg.input_size], theta[..., cfg.input_size :]
        forecast = F.interpolate(knots, size=cfg.horizon, mode=cfg.interpolation)
        return backcast, forecast


class NHiTS(nn.Module):
    """Stacks of ``NHiTSBlock``: residuals chain the blocks, forecasts add up."""

    def __init__(self, config: NHiTSConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(
            NHiTSBlock(config, stack)
            for stack in range(config.n_stacks)
            for _ in range(config.blocks_per_stack)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        residual, exog = x[:, : cfg.n_series], x[:, cfg.n_series :]
        forecast = x.new_zeros(x.shape[0], cfg.n_series, cfg.horizon)
        if cfg.naive_level:
            forecast = forecast + residual[..., -1:]
        for block in self.blocks:
            backcast, block_forecast = block(torch.cat([residual, exog], dim=1))
            residual = residual - backcast
            forecast = forecast + block_forecast
        return forecast
