"""PatchTST: RevIN, patching, channel independence, shapes, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantum_daemon.models.patchtst import PatchTST, PatchTSTConfig, RevIN, TokenBatchNorm
from quantum_daemon.models.torch_training import TrainConfig, Windows, evaluate, train


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def tiny(input_size: int, horizon: int, n_channels: int = 1, **kw: object) -> PatchTSTConfig:
    options: dict[str, object] = dict(d_model=8, n_heads=2, n_layers=2, d_ff=16, dropout=0.1)
    options.update(kw)
    return PatchTSTConfig(input_size, horizon, n_channels, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("input_size", "horizon", "n_channels", "patch_len", "stride"),
    [(37, 5, 3, 16, 8), (16, 1, 1, 16, 8), (101, 13, 2, 7, 3), (50, 9, 1, 5, 5)],
)
def test_output_shape_for_odd_lengths(
    input_size: int, horizon: int, n_channels: int, patch_len: int, stride: int
) -> None:
    config = tiny(input_size, horizon, n_channels, patch_len=patch_len, stride=stride)
    model = PatchTST(config)
    y = model(torch.randn(4, n_channels, input_size))
    assert y.shape == (4, n_channels, horizon)
    patches = model.patchify(torch.randn(4, input_size))
    assert patches.shape == (4, config.n_patches, patch_len)


def test_paper_lookback_gives_42_patches() -> None:
    assert PatchTSTConfig(336, 96).n_patches == 42
    assert PatchTSTConfig(512, 96).n_patches == 64
    assert PatchTSTConfig(336, 96, pad_end=False).n_patches == 41


def test_end_padding_repeats_the_last_value() -> None:
    model = PatchTST(tiny(20, 2, patch_len=8, stride=4))
    x = torch.arange(20, dtype=torch.float32)[None]
    patches = model.patchify(x)[0]
    assert patches[0].tolist() == list(range(8))
    assert patches[-1].tolist() == [16, 17, 18, 19, 19, 19, 19, 19]


@pytest.mark.parametrize("affine", [False, True])
def test_revin_round_trip_is_the_identity(affine: bool) -> None:
    revin = RevIN(3, affine=affine)
    if affine:
        with torch.no_grad():
            revin.weight.copy_(torch.tensor([[0.5], [2.0], [1.5]]))
            revin.bias.copy_(torch.tensor([[0.1], [-0.3], [2.0]]))
    x = torch.randn(5, 3, 40) * 7 + 100
    z, stats = revin.normalize(x)
    assert torch.allclose(revin.denormalize(z, stats), x, atol=1e-4)


def test_revin_normalizes_each_window_and_channel() -> None:
    x = torch.randn(4, 2, 64) * torch.tensor([[[3.0], [0.5]]]) + torch.tensor([[[50.0], [-2.0]]])
    z, _ = RevIN(2).normalize(x)
    assert torch.allclose(z.mean(-1), torch.zeros(4, 2), atol=1e-4)
    assert torch.allclose(z.std(-1, unbiased=False), torch.ones(4, 2), atol=1e-2)


def test_forecast_scales_with_the_input() -> None:
    """RevIN makes the network blind to level and scale: an affine change of
    the input window changes the forecast by the same affine map."""
    model = PatchTST(tiny(32, 6)).eval()
    x = torch.randn(3, 1, 32)
    with torch.no_grad():
        assert torch.allclose(model(10 * x + 5), 10 * model(x) + 5, atol=1e-3)


def test_channels_are_independent_with_shared_weights() -> None:
    """A channel's forecast depends only on that channel, through the same weights."""
    model = PatchTST(tiny(32, 6, n_channels=3)).eval()
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        y = model(x)
        changed = x.clone()
        changed[:, 1] = torch.randn(2, 32)
        y2 = model(changed)
        assert torch.allclose(y[:, [0, 2]], y2[:, [0, 2]], atol=1e-6)
        assert not torch.allclose(y[:, 1], y2[:, 1])
        swapped = model(x[:, [2, 0, 1]])
        assert torch.allclose(swapped, y[:, [2, 0, 1]], atol=1e-6)


def test_encoder_uses_batchnorm_and_residual_attention() -> None:
    model = PatchTST(tiny(32, 6))
    norms = [m for m in model.modules() if isinstance(m, TokenBatchNorm)]
    assert len(norms) == 2 * model.config.n_layers
    seen: list[object] = []
    for layer in model.layers:
        layer.attn.register_forward_hook(lambda _m, args, _out: seen.append(args[1]))
    model(torch.randn(2, 1, 32))
    assert seen[0] is None and all(isinstance(s, torch.Tensor) for s in seen[1:])


def test_a_tiny_model_overfits_a_sine() -> None:
    t = np.arange(600, dtype=np.float32)
    series = (np.sin(2 * np.pi * t / 24) + 0.5 * np.sin(2 * np.pi * t / 7))[:, None]
    windows = Windows(series, np.arange(0, 600 - 48 - 12 + 1), 48, 12, n_targets=1)
    model = PatchTST(tiny(48, 12, d_model=16, n_heads=2, dropout=0.0))
    before = evaluate(model, windows, "mse", 1024)
    config = TrainConfig(
        max_steps=300,
        batch_size=64,
        learning_rate=3e-3,
        eval_every=50,
        patience=10,
        loss="mse",
        decay_every=100,
        device="cpu",
        cpu_threads=1,
    )
    result = train(model, windows, windows, config)
    assert result.best_val_loss < 0.01 < before
