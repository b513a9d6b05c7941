"""The training loop of the torch families, to be read top to bottom.

``train(model, train_windows, val_windows, config)`` fits a forecasting
network on mini-batches of windows, validates every ``eval_every`` steps,
keeps the best weights (in memory, and on disk when a checkpoint path is
given), stops early after ``patience`` evaluations without improvement, and
returns the model holding its best weights.

Everything that decides the outcome is in ``TrainConfig``: seed, batch size,
schedule, clipping, device. On CPU the run is deterministic for a given seed
and thread count; on CUDA it uses mixed precision (bf16 where supported, else
fp16 with a gradient scaler).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    """How to train; each default says why it is what it is."""

    # N-HiTS trains for a fixed number of Adam steps (1,000 in the paper).
    max_steps: int = 1000
    # N-HiTS samples 256 windows per step; big enough for stable MAE gradients.
    batch_size: int = 256
    # Adam at 1e-3 is the N-HiTS default; PatchTST uses 1e-4.
    learning_rate: float = 1e-3
    # Neither paper regularises through the optimizer.
    weight_decay: float = 0.0
    # "step": multiply by lr_decay every decay_every steps (N-HiTS: halve three
    # times over training; PatchTST ETTh: x0.9 per epoch after three epochs).
    # "one_cycle": PyTorch-style one-cycle (PatchTST on the larger datasets).
    schedule: Literal["step", "one_cycle", "constant"] = "step"
    lr_decay: float = 0.5
    decay_every: int = 333
    # Number of decay periods to hold the initial rate before decaying.
    decay_delay: int = 0
    # Share of steps spent warming up in the one-cycle schedule.
    pct_start: float = 0.3
    # N-HiTS validates every 50 steps and stops after 10 bad evaluations.
    eval_every: int = 50
    patience: int = 10
    # Relative improvement of the validation loss that resets the patience;
    # smaller gains still update the checkpoint. Keeps a plateau that only
    # wobbles (BatchNorm statistics, dropout) from running to max_steps.
    min_improvement: float = 0.0
    # The loss the network is trained and validated on (N-HiTS: MAE, PatchTST: MSE).
    loss: Literal["mae", "mse"] = "mae"
    # Clip the global gradient norm; heavy-tailed returns make rare huge
    # gradients. 0 turns clipping off (the papers do not clip).
    grad_clip: float = 1.0
    # Validation batches: as large as memory allows, only speed depends on it.
    eval_batch_size: int = 2048
    # Seeds torch, numpy, random and the batch order.
    seed: int = 0
    # "auto": CUDA when present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CPU threads for torch; 0 keeps the process's setting (a daemon worker
    # pins it once for all its jobs).
    cpu_threads: int = 0
    # Mixed precision on CUDA (ignored on CPU, where it is slower).
    amp: bool = True
    # Where to write the best weights on improvement (safetensors); None keeps
    # them in memory only.
    checkpoint: Path | None = None


@dataclass(frozen=True)
class EvalRecord:
    """One validation point: the step, the mean training loss since the last
    evaluation, the validation loss and the learning rate."""

    step: int
    train_loss: float
    val_loss: float
    lr: float


@dataclass(frozen=True)
class TrainResult:
    best_step: int
    best_val_loss: float
    steps: int
    seconds: float
    device: str
    stopped_early: bool
    history: tuple[EvalRecord, ...] = field(default_factory=tuple)


class Windows:
    """Windows of a ``(time, channels)`` series: ``input_size`` rows of input
    (all channels) followed by ``horizon`` rows of target (the first
    ``n_targets`` channels). ``starts`` are the windows' first rows."""

    def __init__(
        self,
        series: np.ndarray | torch.Tensor,
        starts: np.ndarray | torch.Tensor,
        input_size: int,
        horizon: int,
        n_targets: int,
    ) -> None:
        self.series = torch.as_tensor(series, dtype=torch.float32)
        self.starts = torch.as_tensor(starts, dtype=torch.int64)
        self.input_size, self.horizon, self.n_targets = input_size, horizon, n_targets
        last_row = int(self.starts.max()) + input_size + horizon if len(self.starts) else 0
        if len(self.starts) and (int(self.starts.min()) < 0 or last_row > len(self.series)):
            raise ValueError("a window reaches outside the series")

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def to(self, device: torch.device) -> Windows:
        return Windows(
            self.series.to(device),
            self.starts.to(device),
            self.input_size,
            self.horizon,
            self.n_targets,
        )

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, channels, input_size)`` and targets ``(B, n_targets, horizon)``."""
        span = self.input_size + self.horizon
        # unfold is a view: (n_windows, channels, span) without copying the series.
        windows = self.series.unfold(0, span, 1)[self.starts[rows]]
        return windows[..., : self.input_size], windows[:, : self.n_targets, self.input_size :]


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mae": F.l1_loss,
    "mse": F.mse_loss,
}


def select_device(choice: str = "auto") -> torch.device:
    """CUDA when asked for or when present under "auto"; else CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_cpu(threads: int) -> None:
    """Pin torch's thread count (0 keeps the process's) and ask for deterministic kernels."""
    if threads > 0:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def autocast_for(device: torch.device, enabled: bool) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a gradient scaler is needed)."""
    if device.type != "cuda" or not enabled:
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def learning_rate(step: int, config: TrainConfig) -> float:
    """The learning rate at ``step`` under the configured schedule."""
    base = config.learning_rate
    if config.schedule == "constant":
        return base
    if config.schedule == "step":
        return base * config.lr_decay ** max(0, step // config.decay_every - config.decay_delay)
    return one_cycle(step, config.max_steps, base, config.pct_start)


def one_cycle(step: int, total: int, peak: float, pct_start: float) -> float:
    """Cosine warm-up from peak/25 to peak, then cosine decay to peak/25e4
    (the defaults of ``torch.optim.lr_scheduler.OneCycleLR``)."""
    start, end = peak / 25, peak / 25 / 1e4
    warm = max(1, int(pct_start * total))
    if step < warm:
        return _cosine(start, peak, step / warm)
    return _cosine(peak, end, min(1.0, (step - warm) / max(1, total - warm)))


def _cosine(a: float, b: float, fraction: float) -> float:
    return b + (a - b) * (1 + math.cos(math.pi * fraction)) / 2


def batch_rows(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless mini-batches of window rows: a fresh permutation every epoch;
    the last partial batch of an epoch is dropped unless it is the only one."""
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: Windows,
    loss: str,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> float:
    """Mean loss over every window of ``windows`` (all elements weigh the same)."""
    model.eval()
    loss_fn, total, count = LOSSES[loss], 0.0, 0
    for start in range(0, len(windows), batch_size):
        rows = torch.arange(
            start, min(start + batch_size, len(windows)), device=windows.starts.device
        )
        x, y = windows.batch(rows)
        with autocast():
            pred = model(x)
        total += float(loss_fn(pred.float(), y)) * y.numel()
        count += y.numel()
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Forecasts for inputs ``x`` in evaluation mode, in batches, on x's device."""
    if model.training:  # eval() walks every submodule: a quarter millisecond per live bar
        model.eval()
    parts = [model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return torch.cat(parts) if parts else x.new_zeros(0)


def train(
    model: nn.Module,
    train_windows: Windows,
    val_windows: Windows,
    config: TrainConfig,
    on_eval: Callable[[EvalRecord], None] | None = None,
) -> TrainResult:
    """Fit ``model`` and leave it holding the weights of its best validation loss."""
    started = time.perf_counter()
    device = select_device(config.device)
    if device.type == "cpu":
        configure_cpu(config.cpu_threads)
    else:
        # Deterministic CUDA kernels would need CUBLAS_WORKSPACE_CONFIG and run slower.
        torch.use_deterministic_algorithms(False)
    seed_everything(config.seed)
    model.to(device)
    train_windows, val_windows = train_windows.to(device), val_windows.to(device)
    amp_dtype, needs_scaler = autocast_for(device, config.amp)

    def autocast() -> AbstractContextManager[object]:
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)
    loss_fn = LOSSES[config.loss]
    rows = batch_rows(len(train_windows), config.batch_size, config.seed)

    best_loss, best_step, best_state = math.inf, 0, _cpu_copy(model)
    patience_reference = math.inf
    history: list[EvalRecord] = []
    bad_evals, n_running, stopped_early, step = 0, 0, False, 0
    running = torch.zeros((), device=device)
    model.train()
    for step in range(config.max_steps + 1):
        lr = learning_rate(step, config)
        if step % config.eval_every == 0 or step == config.max_steps:
            val_loss = evaluate(model, val_windows, config.loss, config.eval_batch_size, autocast)
            record = EvalRecord(step, float(running) / max(n_running, 1), val_loss, lr)
            history.append(record)
            running, n_running = torch.zeros((), device=device), 0
            if on_eval is not None:
                on_eval(record)
            if val_loss < best_loss:
                best_loss, best_step, best_state = val_loss, step, _cpu_copy(model)
                if config.checkpoint is not None:
                    save_file(best_state, str(config.checkpoint))
            if val_loss < patience_reference * (1 - config.min_improvement):
                patience_reference, bad_evals = val_loss, 0
            else:
                bad_evals += 1
                if bad_evals >= config.patience:
                    stopped_early = True
                    break
        if step == config.max_steps:
            break

        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = train_windows.batch(next(rows).to(device))
        with autocast():
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        running, n_running = running + loss.detach(), n_running + 1

    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        best_step=best_step,
        best_val_loss=best_loss,
        steps=step,
        seconds=time.perf_counter() - started,
        device=str(device),
        stopped_early=stopped_early,
        history=tuple(history),
    )


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
