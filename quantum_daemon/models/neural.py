"""The torch families of the daemon: ``nhits`` and ``patchtst``.

Both answer the question every forecaster answers (base.py): at the close of
bar ``t``, the log return over the next ``horizon`` bars.

- Input: the last ``lookback`` bars of per-bar log returns, plus exogenous
  channels (the bar's log range ``log(high/low)`` and ``log(1 + volume)``)
  where configured. Each channel is z-scored with the mean and standard
  deviation of the training window only. Decisions earlier than ``lookback``
  see zeros (the training mean) before the first bar.
- Output: the next ``horizon`` per-bar log returns in z-units (the network is
  trained on these, so its losses are in units of one bar's volatility:
  order 1). ``mu`` is their sum mapped back to log returns; ``p_up`` is
  ``Phi(mu / s)`` where ``s`` is the standard deviation of the validation
  residuals ``target - mu`` (the same rule as the tree families).
- Persistence: the network's ``state_dict`` in safetensors (no pickle), and
  everything needed to rebuild it (architecture, channels, normalization
  statistics, residual spread) in the metadata, also copied into the
  safetensors header.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, save_file
from scipy.special import ndtr
from torch import nn

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.params.neural import NHiTSParams, PatchTSTParams
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.models.nhits import NHiTS, NHiTSConfig
from quantum_daemon.models.params import MappingParams
from quantum_daemon.models.patchtst import PatchTST, PatchTSTConfig
from quantum_daemon.models.torch_training import (
    TrainConfig,
    TrainResult,
    Windows,
    predict,
    seed_everything,
    train,
)

ARTIFACT = "model.safetensors"
MIN_SIGMA = 1e-12


def _log_return(bars: Bars) -> np.ndarray:
    out = np.zeros(len(bars))
    out[1:] = np.diff(np.log(bars.close))
    return out


CHANNELS: dict[str, Callable[[Bars], np.ndarray]] = {
    "ret": _log_return,
    "range": lambda bars: np.log(bars.high / bars.low),
    "volume": lambda bars: np.log1p(bars.volume),
}


# -- hyper-parameters: ``domain.params.neural`` (the config checks them without torch) --

_Params = MappingParams


# -- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scaling:
    """Per-channel z-score fitted on the training window."""

    channels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, bars: Bars) -> np.ndarray:
        raw = np.stack([CHANNELS[c](bars) for c in self.channels], axis=1)
        z = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def fit_scaling(bars: Bars, channels: tuple[str, ...], last_row: int) -> Scaling:
    """Mean and std of each channel over bars 1..last_row (bar 0 has no return)."""
    raw = np.stack([CHANNELS[c](bars)[1 : last_row + 1] for c in channels], axis=1)
    std = np.nanstd(raw, axis=0)
    std = np.where(std > MIN_SIGMA, std, 1.0)
    return Scaling(channels, tuple(np.nanmean(raw, axis=0).tolist()), tuple(std.tolist()))


def save_network(network: torch.nn.Module, directory: Path, metadata: Any) -> Path:
    """The network's weights as safetensors, the metadata in the file's header."""
    path = Path(directory) / ARTIFACT
    tensors = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(tensors, str(path), metadata={"quantum_daemon": json.dumps(metadata)})
    return path


def padded(z: np.ndarray, lookback: int) -> np.ndarray:
    """``lookback`` rows of zeros (the training mean) before the first bar, so
    that decision ``t``'s window starts at padded row ``t + 1``."""
    return np.concatenate([np.zeros((lookback, z.shape[1]), dtype=z.dtype), z])


def inputs_at(z: np.ndarray, idx: np.ndarray, lookback: int) -> torch.Tensor:
    """``(len(idx), channels, lookback)``: bars ``t - lookback + 1 .. t`` per decision."""
    rows = np.asarray(idx, dtype=np.int64)[:, None] + 1 + np.arange(lookback)
    return torch.from_numpy(padded(z, lookback)[rows].transpose(0, 2, 1).copy())


def horizon_return(close: np.ndarray, idx: np.ndarray, horizon: int) -> np.ndarray:
    return np.log(close[idx + horizon] / close[idx])


# -- the families ---------------------------------------------------------------------------


@dataclass
class _State:
    """What a fitted family holds."""

    network: nn.Module
    architecture: dict[str, Any]
    params: _Params
    scaling: Scaling
    horizon: int
    seed: int
    sigma: float
    fit: dict[str, Any]


class NeuralFamily:
    """fit / predict / save / load shared by ``nhits`` and ``patchtst``."""

    name: ClassVar[str]
    params_type: ClassVar[type[_Params]]

    def __init__(self) -> None:
        self._state: _State | None = None

    # -- what a subclass supplies ---------------------------------------------------------

    @classmethod
    def architecture(cls, params: Any, horizon: int) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def network(cls, architecture: Mapping[str, Any]) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def n_targets(cls, n_channels: int) -> int:
        """Channels the network forecasts and is trained on; channel 0 is the return."""
        raise NotImplementedError

    # -- the family interface -------------------------------------------------------------

    def fit(self, data: TrainSet) -> FitInfo:
        params: Any = self.params_type.from_mapping(data.params)
        channels = ("ret", *params.exogenous)
        scaling = fit_scaling(data.bars, channels, int(data.train_idx[-1]))
        z = scaling.apply(data.bars)
        train_idx = _usable(data.train_idx, params.lookback, data.horizon, len(data.bars))
        val_idx = _usable(data.val_idx, 0, data.horizon, len(data.bars))
        arch = self.architecture(params, data.horizon) | {"n_channels_in": len(channels)}
        seed_everything(data.seed)  # the initial weights are part of the seeded run
        net = self.network(arch)
        n_targets = self.n_targets(len(channels))
        result = train(
            net,
            self._windows(z, train_idx, params, data.horizon, n_targets),
            self._windows(z, val_idx, params, data.horizon, n_targets),
            self._train_config(params, data.seed),
            on_eval=_listening(data.on_validation),
        )
        net.cpu().eval()
        state = _State(net, arch, params, scaling, data.horizon, data.seed, 1.0, {})
        self._state = state
        residual = horizon_return(data.bars.close, val_idx, data.horizon) - self._mu(
            data.bars, val_idx
        )
        state.sigma = max(float(np.std(residual, ddof=1)) if residual.size > 1 else 0.0, MIN_SIGMA)
        state.fit = _fit_summary(result, len(train_idx), len(val_idx))
        return FitInfo(
            best_iteration=result.best_step,
            val_loss=result.best_val_loss,
            extra={**state.fit, "residual_sigma": state.sigma},
        )

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        state = self._require_state()
        mu = self._mu(bars, np.asarray(idx, dtype=np.int64))
        return Forecast(mu=mu, p_up=ndtr(mu / state.sigma))

    def save(self, directory: Path) -> list[Path]:
        return [save_network(self._require_state().network, directory, self.metadata())]

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Self:
        info = meta.get("model", meta)
        if info.get("family", cls.name) != cls.name:
            raise ValueError(f"artifact of family {info['family']!r}, not {cls.name!r}")
        arch = dict(info["architecture"])
        net = cls.network(arch)
        net.load_state_dict(load_file(str(Path(directory) / ARTIFACT)))
        net.eval()
        scaling = Scaling(**{k: tuple(v) for k, v in info["scaling"].items()})
        family = cls()
        family._state = _State(
            net,
            arch,
            cls.params_type.from_mapping(info["params"]),
            scaling,
            int(info["horizon"]),
            int(info["seed"]),
            float(info["residual_sigma"]),
            dict(info.get("fit", {})),
        )
        return family

    def metadata(self) -> dict[str, Any]:
        state = self._require_state()
        return {
            "family": self.name,
            "architecture": state.architecture,
            "params": state.params.as_dict(),
            "scaling": dataclasses.asdict(state.scaling),
            "features": list(state.scaling.channels),
            "horizon": state.horizon,
            "seed": state.seed,
            "residual_sigma": state.sigma,
            "fit": state.fit,
            "library_versions": {
                "torch": torch.__version__,
                "safetensors": safetensors.__version__,
            },
            "target": "next horizon per-bar log returns, z-scored with the training window",
            "p_up": "Phi(mu / residual_sigma), residual_sigma from the validation window",
        }

    # -- helpers --------------------------------------------------------------------------

    def _mu(self, bars: Bars, idx: np.ndarray) -> np.ndarray:
        """Sum of the forecast per-bar returns, mapped back to log-return units."""
        state = self._require_state()
        x = inputs_at(state.scaling.apply(bars), idx, int(state.architecture["input_size"]))
        with torch.inference_mode():
            z = predict(state.network, x)[:, 0, :].double().numpy()
        mean, std = state.scaling.mean[0], state.scaling.std[0]
        return z.sum(axis=1) * std + state.horizon * mean

    @staticmethod
    def _windows(
        z: np.ndarray, idx: np.ndarray, params: Any, horizon: int, n_targets: int
    ) -> Windows:
        return Windows(padded(z, params.lookback), idx + 1, params.lookback, horizon, n_targets)

    @staticmethod
    def _train_config(params: Any, seed: int) -> TrainConfig:
        steps = params.max_steps
        return TrainConfig(
            max_steps=steps,
            batch_size=params.batch_size,
            learning_rate=params.learning_rate,
            schedule="step",
            lr_decay=0.5,
            decay_every=max(1, steps // 3),
            eval_every=params.eval_every,
            patience=params.patience,
            min_improvement=params.min_improvement,
            loss=params.loss,
            grad_clip=params.grad_clip,
            seed=seed,
            device=params.device,
            cpu_threads=params.threads,
        )

    def _require_state(self) -> _State:
        if self._state is None:
            raise RuntimeError(f"{self.name} model is not fitted")
        return self._state


def _listening(listener: Callable[[int, float], None] | None) -> Any:
    if listener is None:
        return None
    return lambda record: listener(record.step, record.val_loss)


def _usable(idx: np.ndarray, lookback: int, horizon: int, n_bars: int) -> np.ndarray:
    """Decisions with a full lookback (when enough remain) and a known target."""
    idx = np.asarray(idx, dtype=np.int64)
    idx = idx[idx + horizon < n_bars]
    full = idx[idx >= lookback]
    return full if full.size >= max(1, idx.size // 2) else idx


def _fit_summary(result: TrainResult, n_train: int, n_val: int) -> dict[str, Any]:
    return {
        "best_step": result.best_step,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.seconds, 3),
        "device": result.device,
        "n_train_windows": n_train,
        "n_val_windows": n_val,
        "val_curve": [[r.step, round(r.val_loss, 6)] for r in result.history],
    }


class NHiTSFamily(NeuralFamily):
    name: ClassVar[str] = "nhits"
    params_type: ClassVar[type[_Params]] = NHiTSParams

    @classmethod
    def architecture(cls, params: Any, horizon: int) -> dict[str, Any]:
        return {
            "input_size": params.lookback,
            "horizon": horizon,
            "pool_kernels": list(params.pool_kernels),
            "downsample": list(params.downsample),
            "hidden": params.hidden,
            "n_layers": params.n_layers,
            "dropout": params.dropout,
        }

    @classmethod
    def network(cls, architecture: Mapping[str, Any]) -> nn.Module:
        arch = dict(architecture)
        n_in = int(arch.pop("n_channels_in"))
        arch["pool_kernels"] = tuple(arch["pool_kernels"])
        arch["downsample"] = tuple(arch["downsample"])
        # Returns carry no level: the naive-level start of the paper does not apply.
        return NHiTS(NHiTSConfig(**arch, n_series=1, n_exog=n_in - 1, naive_level=False))

    @classmethod
    def n_targets(cls, n_channels: int) -> int:
        return 1  # exogenous channels are inputs only


class PatchTSTFamily(NeuralFamily):
    name: ClassVar[str] = "patchtst"
    params_type: ClassVar[type[_Params]] = PatchTSTParams

    @classmethod
    def architecture(cls, params: Any, horizon: int) -> dict[str, Any]:
        return {
            "input_size": params.lookback,
            "horizon": horizon,
            "patch_len": params.patch_len,
            "stride": params.stride,
            "d_model": params.d_model,
            "n_heads": params.n_heads,
            "n_layers": params.n_layers,
            "d_ff": params.d_ff,
            "dropout": params.dropout,
        }

    @classmethod
    def network(cls, architecture: Mapping[str, Any]) -> nn.Module:
        arch = dict(architecture)
        n_in = int(arch.pop("n_channels_in"))
        return PatchTST(PatchTSTConfig(**arch, n_channels=n_in))

    @classmethod
    def n_targets(cls, n_channels: int) -> int:
        return n_channels  # channel independence: every channel is forecast alike
