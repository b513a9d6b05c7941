"""PatchTST (Nie et al., ICLR 2023), supervised, as plain ``nn.Module``s.

Per window and channel:

1. RevIN: subtract the window's mean and divide by its standard deviation
   (optionally an affine map per channel); the forecast is mapped back with
   the same statistics, so the network only models the shape.
2. Channel independence: a ``(batch, channels, length)`` input becomes
   ``batch * channels`` univariate series that share every weight.
3. Overlapping patches: the series is padded at the end by repeating its last
   value ``stride`` times, then cut into patches of ``patch_len`` every
   ``stride`` steps (336 steps, 16/8 -> 42 patches).
4. A linear patch embedding plus a learnable position embedding, a
   transformer encoder whose sub-layers are normalised with BatchNorm (the
   paper: better than LayerNorm for time series), and
5. a flatten head: one linear map from all patch embeddings to the horizon.

As in the official code, attention scores are residual across layers
(each layer adds the previous layer's pre-softmax scores); the option
``residual_attention=False`` gives the plain transformer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PatchTSTConfig:
    """Architecture of one PatchTST network. Defaults: the paper's large-data
    model (ETTm, Weather); ETTh uses the reduced model (16/4/128, dropout 0.3)."""

    input_size: int
    horizon: int
    n_channels: int = 1
    patch_len: int = 16
    stride: int = 8
    d_model: int = 128
    n_heads: int = 16
    n_layers: int = 3
    d_ff: int = 256
    dropout: float = 0.2
    attn_dropout: float = 0.0
    head_dropout: float = 0.0
    revin: bool = True
    revin_affine: bool = False
    residual_attention: bool = True
    pad_end: bool = True

    def __post_init__(self) -> None:
        if self.input_size < self.patch_len:
            raise ValueError("input_size must be at least patch_len")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be a multiple of n_heads")
        if self.stride < 1 or self.horizon < 1:
            raise ValueError("stride and horizon must be >= 1")

    @property
    def n_patches(self) -> int:
        """Patches per series: floor((L - P) / S) + 1, plus one for the end padding."""
        return (self.input_size - self.patch_len) // self.stride + 1 + int(self.pad_end)


@dataclass(frozen=True)
class RevINStats:
    """Per-window, per-channel statistics used to undo the normalisation."""

    mean: torch.Tensor
    std: torch.Tensor


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., ICLR 2022) over the time axis."""

    def __init__(self, n_channels: int, affine: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(n_channels, 1))
            self.bias = nn.Parameter(torch.zeros(n_channels, 1))

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, RevINStats]:
        mean = x.mean(dim=-1, keepdim=True).detach()
        std = torch.sqrt(x.var(dim=-1, keepdim=True, unbiased=False) + self.eps).detach()
        z = (x - mean) / std
        if self.affine:
            z = z * self.weight + self.bias
        return z, RevINStats(mean, std)

    def denormalize(self, z: torch.Tensor, stats: RevINStats) -> torch.Tensor:
        if self.affine:
            z = (z - self.bias) / (self.weight + self.eps * self.eps)
        return z * stats.std + stats.mean


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a uniform-threshold mask on CPU, where it is about
    twice as fast as the Bernoulli sampler and dropout dominated the step time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        scale = torch.empty_like(x).uniform_().ge_(self.p).div_(1.0 - self.p)
        return x * scale


class MultiheadAttention(nn.Module):
    """Scaled dot-product attention that also returns its pre-softmax scores."""

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        self.attn_dropout = Dropout(config.attn_dropout)
        self.out_dropout = Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, prev_scores: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n_tokens, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, n_tokens, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        if prev_scores is not None:
            scores = scores + prev_scores
        weights = self.attn_dropout(torch.softmax(scores, dim=-1))
        y = (weights @ v).transpose(1, 2).reshape(batch, n_tokens, d_model)
        return self.out_dropout(self.out(y)), scores


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the feature axis of ``(batch, tokens, features)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class EncoderLayer(nn.Module):
    """Post-norm transformer layer: attention, add, BatchNorm; MLP, add, BatchNorm."""

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__()
        self.attn = MultiheadAttention(config)
        self.norm_attn = TokenBatchNorm(config.d_model)
        self.ff = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff),
            nn.GELU(),
            Dropout(config.dropout),
            nn.Linear(config.d_ff, config.d_model),
        )
        self.ff_dropout = Dropout(config.dropout)
        self.norm_ff = TokenBatchNorm(config.d_model)

    def forward(
        self, x: torch.Tensor, prev_scores: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, scores = self.attn(x, prev_scores)
        x = self.norm_attn(x + attended)
        x = self.norm_ff(x + self.ff_dropout(self.ff(x)))
        return x, scores


class PatchTST(nn.Module):
    """``(batch, channels, input_size)`` -> ``(batch, channels, horizon)``."""

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__()
        self.config = config
        self.revin = RevIN(config.n_channels, affine=config.revin_affine)
        self.embed = nn.Linear(config.patch_len, config.d_model)
        self.position = nn.Parameter(torch.empty(config.n_patches, config.d_model))
        nn.init.uniform_(self.position, -0.02, 0.02)
        self.embed_dropout = Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layers))
        self.head = nn.Linear(config.n_patches * config.d_model, config.horizon)
        self.head_dropout = Dropout(config.head_dropout)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """Univariate series ``(n, L)`` -> patches ``(n, n_patches, patch_len)``."""
        cfg = self.config
        if cfg.pad_end:
            x = F.pad(x.unsqueeze(1), (0, cfg.stride), mode="replicate").squeeze(1)
        return x.unfold(-1, cfg.patch_len, cfg.stride)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Univariate series ``(n, L)`` -> patch embeddings ``(n, n_patches, d_model)``."""
        tokens = self.embed_dropout(self.embed(self.patchify(x)) + self.position)
        scores = None
        for layer in self.layers:
            tokens, layer_scores = layer(tokens, scores)
            if self.config.residual_attention:
                scores = layer_scores
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_channels, length = x.shape
        stats = None
        if self.config.revin:
            x, stats = self.revin.normalize(x)
        tokens = self.encode(x.reshape(batch * n_channels, length))
        y = self.head_dropout(self.head(tokens.flatten(1)))
        y = y.view(batch, n_channels, self.config.horizon)
        if stats is not None:
            y = self.revin.denormalize(y, stats)
        return y
