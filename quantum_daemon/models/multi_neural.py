"""The torch families over several symbols: ``nhits`` and ``patchtst`` as global models.

One network is trained on the windows of every symbol, channel-independently
as both architectures already are (a window holds one series' channels, never
another symbol's). Each symbol is z-scored with its own training-window
statistics (``neural.fit_scaling``: per-series normalisation), and PatchTST
normalises every input window again by its own mean and spread (RevIN), so
the network sees every symbol in the same units. The windows of a symbol are
cut from that symbol's own padded series: the symbols' series are laid end
to end, and no window crosses from one into the next (a window ends at a
decision's target bar, inside its symbol's block).

Predicting for a symbol maps the network's z-units back with that symbol's
scaling; ``p_up = Phi(mu / s)`` with ``s`` the symbol's validation residual
spread. The artifact is the network's ``state_dict`` in safetensors; the
symbols, their codes (position in ``symbols``), scalings and spreads are in
the metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file

from quantum_daemon.domain.bars import Bars
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.models.multi import check_sets, symbol_code
from quantum_daemon.models.neural import (
    ARTIFACT,
    MIN_SIGMA,
    NeuralFamily,
    NHiTSFamily,
    PatchTSTFamily,
    Scaling,
    _fit_summary,
    _listening,
    _State,
    _usable,
    fit_scaling,
    horizon_return,
    padded,
    save_network,
)
from quantum_daemon.models.torch_training import Windows, seed_everything, train


@dataclasses.dataclass(frozen=True)
class _Pooled:
    """Every symbol's padded series end to end, and the windows' first rows."""

    series: np.ndarray
    train_starts: np.ndarray
    val_starts: np.ndarray


class MultiNeuralFamily:
    """One network over several symbols; see the module docstring."""

    name: ClassVar[str]
    single: ClassVar[type[NeuralFamily]]

    def __init__(self) -> None:
        self._views: dict[str, NeuralFamily] = {}  # per symbol: the shared network, its scaling
        self._symbols: tuple[str, ...] = ()

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    def fit_multi(self, data: Mapping[str, TrainSet]) -> FitInfo:
        symbols = check_sets(data)
        first = data[symbols[0]]
        params: Any = self.single.params_type.from_mapping(first.params)
        channels = ("ret", *params.exogenous)
        horizon, lookback = first.horizon, params.lookback
        scalings = {
            s: fit_scaling(data[s].bars, channels, int(data[s].train_idx[-1])) for s in symbols
        }
        usable = {
            s: (
                _usable(data[s].train_idx, lookback, horizon, len(data[s].bars)),
                _usable(data[s].val_idx, 0, horizon, len(data[s].bars)),
            )
            for s in symbols
        }
        pooled = _pool(symbols, data, scalings, usable, lookback)
        arch = self.single.architecture(params, horizon) | {"n_channels_in": len(channels)}
        seed_everything(first.seed)  # the initial weights are part of the seeded run
        net = self.single.network(arch)
        n_targets = self.single.n_targets(len(channels))
        result = train(
            net,
            Windows(pooled.series, pooled.train_starts, lookback, horizon, n_targets),
            Windows(pooled.series, pooled.val_starts, lookback, horizon, n_targets),
            self.single._train_config(params, first.seed),
            on_eval=_listening(first.on_validation),
        )
        net.cpu().eval()
        fit = _fit_summary(result, len(pooled.train_starts), len(pooled.val_starts))
        self._symbols = symbols
        self._views = {
            s: self._view(_State(net, arch, params, scalings[s], horizon, first.seed, 1.0, fit))
            for s in symbols
        }
        for s in symbols:
            val = usable[s][1]
            residual = horizon_return(data[s].bars.close, val, horizon) - self._views[s]._mu(
                data[s].bars, val
            )
            spread = float(np.std(residual, ddof=1)) if residual.size > 1 else 0.0
            self._views[s]._require_state().sigma = max(spread, MIN_SIGMA)
        return FitInfo(
            best_iteration=result.best_step,
            val_loss=result.best_val_loss,
            extra={**fit, "residual_sigma": self._sigmas()},
        )

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        symbol_code(self._symbols, bars.symbol)  # refuses a symbol it was not fitted on
        return self._views[bars.symbol].predict(bars, idx)

    def save(self, directory: Path) -> list[Path]:
        return [save_network(self._state().network, directory, self.metadata())]

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Self:
        info = meta["model"]
        symbols = tuple(info["symbols"])
        if [info["symbol_codes"][s] for s in symbols] != list(range(len(symbols))):
            raise ValueError(f"{cls.name} artifact's symbol codes do not match its symbols")
        arch = dict(info["architecture"])
        net = cls.single.network(arch)
        net.load_state_dict(load_file(str(Path(directory) / ARTIFACT)))
        net.eval()
        params = cls.single.params_type.from_mapping(info["params"])
        model = cls()
        model._symbols = symbols
        for s in symbols:
            scaling = Scaling(**{k: tuple(v) for k, v in info["scaling"][s].items()})
            state = _State(
                net,
                arch,
                params,
                scaling,
                int(info["horizon"]),
                int(info["seed"]),
                float(info["residual_sigma"][s]),
                dict(info.get("fit", {})),
            )
            model._views[s] = model._view(state)
        return model

    def metadata(self) -> dict[str, Any]:
        state = self._state()
        return {
            "family": self.name,
            "symbols": list(self._symbols),
            "symbol_codes": {s: i for i, s in enumerate(self._symbols)},
            "architecture": state.architecture,
            "params": state.params.as_dict(),
            "scaling": {
                s: dataclasses.asdict(v._require_state().scaling) for s, v in self._views.items()
            },
            "features": list(state.scaling.channels),
            "horizon": state.horizon,
            "seed": state.seed,
            "residual_sigma": self._sigmas(),
            "fit": state.fit,
            "library_versions": {
                "torch": torch.__version__,
                "safetensors": safetensors.__version__,
            },
            "target": "next horizon per-bar log returns, z-scored per symbol (training window)",
            "p_up": "Phi(mu / residual_sigma[symbol]), from the symbol's validation window",
        }

    def _view(self, state: _State) -> NeuralFamily:
        view = self.single()
        view._state = state
        return view

    def _state(self) -> _State:
        if not self._views:
            raise RuntimeError(f"{self.name} multi-symbol model is not fitted")
        return self._views[self._symbols[0]]._require_state()

    def _sigmas(self) -> dict[str, float]:
        return {s: v._require_state().sigma for s, v in self._views.items()}


def _pool(
    symbols: tuple[str, ...],
    data: Mapping[str, TrainSet],
    scalings: Mapping[str, Scaling],
    usable: Mapping[str, tuple[np.ndarray, np.ndarray]],
    lookback: int,
) -> _Pooled:
    blocks, train_starts, val_starts = [], [], []
    offset = 0
    for s in symbols:
        block = padded(scalings[s].apply(data[s].bars), lookback)
        train_idx, val_idx = usable[s]
        train_starts.append(offset + train_idx + 1)  # padded row of the window's first bar
        val_starts.append(offset + val_idx + 1)
        blocks.append(block)
        offset += len(block)
    return _Pooled(np.concatenate(blocks), np.concatenate(train_starts), np.concatenate(val_starts))


class MultiNHiTSFamily(MultiNeuralFamily):
    name: ClassVar[str] = "nhits"
    single: ClassVar[type[NeuralFamily]] = NHiTSFamily


class MultiPatchTSTFamily(MultiNeuralFamily):
    name: ClassVar[str] = "patchtst"
    single: ClassVar[type[NeuralFamily]] = PatchTSTFamily
