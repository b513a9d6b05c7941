"""The training loop: windows, schedule, determinism, checkpoints, early stopping."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from quantum_daemon.models.torch_training import (
    TrainConfig,
    Windows,
    autocast_for,
    batch_rows,
    evaluate,
    learning_rate,
    select_device,
    train,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def linear_model(input_size: int = 8, horizon: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(1), nn.Linear(input_size, horizon), nn.Unflatten(1, (1, horizon))
    )


def noisy_windows(seed: int, n: int = 300, input_size: int = 8, horizon: int = 3) -> Windows:
    rng = np.random.default_rng(seed)
    series = np.cumsum(rng.standard_normal(n)).astype(np.float32)[:, None] * 0.1
    return Windows(series, np.arange(n - input_size - horizon + 1), input_size, horizon, 1)


def cpu_config(**kw: object) -> TrainConfig:
    options: dict[str, object] = dict(
        max_steps=60,
        batch_size=32,
        eval_every=10,
        patience=100,
        loss="mse",
        device="cpu",
        cpu_threads=1,
        decay_every=20,
    )
    options.update(kw)
    return TrainConfig(**options)  # type: ignore[arg-type]


def test_windows_cut_inputs_and_targets_from_the_series() -> None:
    series = np.arange(40, dtype=np.float32).reshape(20, 2)
    windows = Windows(series, np.array([0, 5, 9]), input_size=4, horizon=3, n_targets=1)
    x, y = windows.batch(torch.tensor([1, 2]))
    assert x.shape == (2, 2, 4) and y.shape == (2, 1, 3)
    assert x[0, 0].tolist() == [10, 12, 14, 16]  # rows 5..8, channel 0
    assert x[0, 1].tolist() == [11, 13, 15, 17]
    assert y[1, 0].tolist() == [26, 28, 30]  # rows 13..15, channel 0


def test_windows_outside_the_series_are_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        Windows(np.zeros((10, 1)), np.array([5]), input_size=4, horizon=3, n_targets=1)


def test_batches_cover_each_window_once_per_epoch() -> None:
    rows = batch_rows(10, 3, seed=0)
    epoch = torch.cat([next(rows) for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # the partial last batch is dropped


def test_step_schedule_holds_then_decays() -> None:
    config = TrainConfig(
        learning_rate=1e-3, schedule="step", lr_decay=0.5, decay_every=10, decay_delay=1
    )
    rates = [learning_rate(s, config) for s in (0, 9, 10, 19, 20, 30)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 2.5e-4])


def test_one_cycle_warms_up_to_the_peak_then_anneals() -> None:
    config = TrainConfig(learning_rate=1e-3, schedule="one_cycle", pct_start=0.3, max_steps=100)
    rates = [learning_rate(s, config) for s in range(101)]
    assert rates[0] == pytest.approx(1e-3 / 25)
    assert max(rates) == pytest.approx(1e-3) and int(np.argmax(rates)) == 30
    assert rates[-1] == pytest.approx(1e-3 / 25 / 1e4)


def test_device_selection() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert autocast_for(torch.device("cpu"), enabled=True) == (None, False)


def test_training_is_deterministic_on_cpu() -> None:
    """Same seed: identical weights; another seed: other weights."""
    results = []
    for seed in (3, 3, 4):
        model = linear_model()
        train(model, noisy_windows(0), noisy_windows(1), cpu_config(seed=seed))
        results.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def test_best_weights_are_kept_and_checkpointed(tmp_path: Path) -> None:
    """The model ends with the weights of its best validation loss, and those
    are the weights written on the last improvement."""
    checkpoint = tmp_path / "best.safetensors"
    model = linear_model()
    val = noisy_windows(1)
    before = evaluate(model, val, "mse", 512)
    result = train(model, noisy_windows(0), val, cpu_config(checkpoint=checkpoint))
    assert result.best_val_loss < before
    assert evaluate(model, val, "mse", 512) == pytest.approx(result.best_val_loss, rel=1e-6)
    assert min(r.val_loss for r in result.history) == result.best_val_loss
    saved = load_file(str(checkpoint))
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor)


def test_early_stopping_after_patience_evaluations_without_improvement() -> None:
    """With a learning rate of zero nothing improves after step 0: training
    stops after ``patience`` further evaluations."""
    config = cpu_config(
        learning_rate=0.0, schedule="constant", max_steps=1000, eval_every=5, patience=3
    )
    result = train(linear_model(), noisy_windows(0), noisy_windows(1), config)
    assert result.stopped_early
    assert result.steps == 15 and result.best_step == 0
    assert [r.step for r in result.history] == [0, 5, 10, 15]


def test_small_gains_update_the_checkpoint_but_not_the_patience() -> None:
    """With a 50% improvement threshold a slowly improving run stops after
    ``patience`` evaluations, yet keeps the weights of its best evaluation."""
    config = cpu_config(
        learning_rate=1e-3,
        schedule="constant",
        max_steps=1000,
        eval_every=5,
        patience=3,
        min_improvement=0.5,
    )
    result = train(linear_model(), noisy_windows(0), noisy_windows(1), config)
    losses = [r.val_loss for r in result.history]
    assert result.stopped_early and result.steps == 15
    assert losses[-1] < losses[0] and result.best_step > 0
    assert result.best_val_loss == min(losses)


def test_gradient_clipping_bounds_the_gradient_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """A huge gradient reaches the optimizer with at most ``grad_clip`` norm."""
    norms: list[float] = []
    clip = nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):  # type: ignore[no-untyped-def]
        params = list(params)
        total = clip(params, max_norm, *args, **kwargs)
        norms.append(float(torch.cat([p.grad.flatten() for p in params]).norm()))
        return total

    monkeypatch.setattr(nn.utils, "clip_grad_norm_", recording_clip)
    model = linear_model()
    for p in model.parameters():
        p.register_hook(lambda g: g * 1e6)
    train(model, noisy_windows(0), noisy_windows(1), cpu_config(max_steps=2, grad_clip=0.5))
    assert len(norms) == 2 and all(n <= 0.5 + 1e-4 for n in norms)


def test_losses_are_reported_per_element() -> None:
    """The validation loss is a mean over every window and step, so it does not
    depend on the evaluation batch size."""
    model = linear_model()
    val = noisy_windows(1)
    assert evaluate(model, val, "mae", 7) == pytest.approx(evaluate(model, val, "mae", 1000))
    assert math.isfinite(evaluate(model, val, "mse", 1000))
