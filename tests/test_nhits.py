"""N-HiTS: shapes, multi-rate pooling, hierarchical interpolation, and that it learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quantum_daemon.models.nhits import NHiTS, NHiTSBlock, NHiTSConfig
from quantum_daemon.models.torch_training import TrainConfig, Windows, evaluate, train


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("input_size", "horizon", "kernels", "ratios", "n_series", "n_exog"),
    [
        (37, 11, (4, 3, 1), (5, 2, 1), 1, 0),
        (7, 5, (2, 2, 1), (3, 1, 1), 3, 0),
        (50, 13, (7, 3, 1), (13, 4, 1), 1, 2),
        (9, 1, (9, 1), (1, 1), 2, 1),
    ],
)
def test_output_shape_for_odd_lengths(
    input_size: int,
    horizon: int,
    kernels: tuple[int, ...],
    ratios: tuple[int, ...],
    n_series: int,
    n_exog: int,
) -> None:
    """Lookbacks and horizons that the kernels and ratios do not divide still
    give one forecast per target channel and horizon step."""
    config = NHiTSConfig(input_size, horizon, n_series, n_exog, kernels, ratios, hidden=16)
    y = NHiTS(config)(torch.randn(4, n_series + n_exog, input_size))
    assert y.shape == (4, n_series, horizon)
    assert torch.isfinite(y).all()


def test_pooling_kernels_and_knots_follow_the_configuration() -> None:
    """Each stack pools with its own kernel (ceil(L / k) points per channel
    reach its MLP) and predicts ceil(H / ratio) forecast coefficients."""
    config = NHiTSConfig(
        input_size=50,
        horizon=13,
        n_series=2,
        n_exog=1,
        pool_kernels=(7, 3, 1),
        downsample=(13, 4, 1),
        blocks_per_stack=2,
        hidden=8,
    )
    model = NHiTS(config)
    assert len(model.blocks) == 6
    for i, block in enumerate(model.blocks):
        stack = i // 2
        kernel, ratio = config.pool_kernels[stack], config.downsample[stack]
        assert block.kernel == kernel
        pooled = block.pool(torch.randn(2, 3, 50))
        assert pooled.shape[-1] == math.ceil(50 / kernel)
        assert block.mlp[0].in_features == 3 * math.ceil(50 / kernel)
        assert block.n_knots == math.ceil(13 / ratio)
        assert block.mlp[-1].out_features == 2 * (50 + math.ceil(13 / ratio))
    assert [config.n_knots(s) for s in range(3)] == [1, 4, 13]


def test_max_pooling_keeps_the_largest_value_of_each_window() -> None:
    block = NHiTSBlock(NHiTSConfig(6, 2, pool_kernels=(4, 1), downsample=(1, 1), hidden=4), 0)
    x = torch.tensor([[[1.0, 5.0, 2.0, 0.0, -1.0, 3.0]]])
    assert block.pool(x).flatten().tolist() == [5.0, 3.0]


def test_one_knot_interpolates_to_a_constant_forecast() -> None:
    """A stack whose ratio leaves one coefficient can only forecast a level:
    the hierarchical interpolation bounds its frequency content."""
    config = NHiTSConfig(20, 9, pool_kernels=(2, 1), downsample=(9, 1), hidden=8)
    coarse, fine = NHiTS(config).blocks
    _, forecast = coarse(torch.randn(3, 1, 20))
    assert forecast.shape == (3, 1, 9)
    assert torch.allclose(forecast, forecast[..., :1].expand_as(forecast))
    _, detailed = fine(torch.randn(3, 1, 20))
    assert not torch.allclose(detailed, detailed[..., :1].expand_as(detailed))


def test_forecast_starts_from_the_last_value_and_blocks_add_up() -> None:
    """With every block's output layer at zero the forecast is the naive level;
    with naive_level off it is zero."""
    for naive in (True, False):
        config = NHiTSConfig(12, 4, n_series=2, hidden=8, naive_level=naive)
        model = NHiTS(config)
        for block in model.blocks:
            torch.nn.init.zeros_(block.mlp[-1].weight)
            torch.nn.init.zeros_(block.mlp[-1].bias)
        x = torch.randn(5, 2, 12)
        expected = x[..., -1:].expand(5, 2, 4) if naive else torch.zeros(5, 2, 4)
        assert torch.allclose(model(x), expected)


def test_backcast_residuals_chain_the_blocks() -> None:
    """The second block sees the input minus the first block's backcast."""
    config = NHiTSConfig(10, 3, pool_kernels=(1, 1), downsample=(1, 1), hidden=8)
    model = NHiTS(config)
    seen: list[torch.Tensor] = []
    model.blocks[1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.randn(2, 1, 10)
    model(x)
    backcast, _ = model.blocks[0](x)
    assert torch.allclose(seen[0], x - backcast, atol=1e-6)


def test_invalid_configurations_are_rejected() -> None:
    with pytest.raises(ValueError, match="one entry per stack"):
        NHiTSConfig(10, 2, pool_kernels=(2, 1), downsample=(1,))
    with pytest.raises(ValueError, match="longer than the input"):
        NHiTSConfig(4, 2, pool_kernels=(8, 1), downsample=(1, 1))


def test_a_tiny_model_overfits_a_sine() -> None:
    """Trained on a noiseless sine, N-HiTS forecasts it almost exactly."""
    t = np.arange(600, dtype=np.float32)
    series = np.sin(2 * np.pi * t / 24)[:, None]
    windows = Windows(series, np.arange(0, 600 - 48 - 12 + 1), 48, 12, n_targets=1)
    model = NHiTS(NHiTSConfig(48, 12, pool_kernels=(4, 2, 1), downsample=(6, 2, 1), hidden=32))
    before = evaluate(model, windows, "mae", 1024)
    config = TrainConfig(
        max_steps=300,
        batch_size=64,
        learning_rate=3e-3,
        eval_every=50,
        patience=10,
        loss="mae",
        decay_every=100,
        device="cpu",
        cpu_threads=1,
    )
    result = train(model, windows, windows, config)
    assert result.best_val_loss < 0.03 < before
