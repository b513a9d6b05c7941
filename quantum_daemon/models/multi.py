"""Global models: one model over several symbols (``{family}_multi_{TF}``).

A multi-symbol family is fitted on one ``TrainSet`` per symbol
(``fit_multi``) and answers ``predict(bars, idx)`` for the symbol of
``bars`` (``bars.symbol``) with that symbol's own scaling and spread; a
symbol it was not fitted on is refused. How each family pools the series:

- trees (``multi_trees``): the feature rows of every symbol stacked, the
  symbol one-hot encoded as a categorical feature (its stable code: its
  position in ``symbols``), the target scaled by the symbol's own training
  volatility;
- torch (``multi_neural``): one network trained channel-independently on the
  windows of every symbol, each symbol z-scored with its own training
  statistics (PatchTST further normalises each window: RevIN).

``MultiCalibrated`` calibrates ``p_up`` and fits the forecast intervals
(``models.intervals``) per symbol on that symbol's validation window, as
``models.calibrated`` does for a single symbol.
``multi_family(name)`` is what training and loading use.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, cast

import numpy as np

from quantum_daemon.core.calibration import (
    Calibrator,
    expected_calibration_error,
    fit_calibrator,
)
from quantum_daemon.domain.bars import Bars
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.models.calibrated import (
    CALIBRATION_KEY,
    DEFAULT_METHOD,
    N_BINS,
    check_method,
    realized_up,
)
from quantum_daemon.models.intervals import (
    INTERVALS_KEY,
    fit_intervals,
    intervals_from_metadata,
    intervals_metadata,
    with_quantiles,
)

_MULTI_MODULES: dict[str, tuple[str, str]] = {
    "xgb": ("quantum_daemon.models.multi_trees", "MultiXGBFamily"),
    "lgbm": ("quantum_daemon.models.multi_trees", "MultiLGBMFamily"),
    "nhits": ("quantum_daemon.models.multi_neural", "MultiNHiTSFamily"),
    "patchtst": ("quantum_daemon.models.multi_neural", "MultiPatchTSTFamily"),
}


class UnknownSymbol(ValueError):
    """A multi-symbol model asked about a symbol it was not fitted on."""


class MultiFamily(Protocol):
    """A family fitted over several symbols at once."""

    name: ClassVar[str]

    @property
    def symbols(self) -> tuple[str, ...]: ...

    def fit_multi(self, data: Mapping[str, TrainSet]) -> FitInfo: ...

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast: ...

    def save(self, directory: Path) -> list[Path]: ...

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> MultiFamily: ...

    def metadata(self) -> dict[str, Any]: ...


def symbol_code(symbols: tuple[str, ...], symbol: str) -> int:
    """The stable code of ``symbol``: its position in the fitted ``symbols``."""
    try:
        return symbols.index(symbol)
    except ValueError:
        raise UnknownSymbol(
            f"symbol {symbol!r} is not one this model was fitted on: {list(symbols)}"
        ) from None


def check_sets(data: Mapping[str, TrainSet]) -> tuple[str, ...]:
    """The symbols of ``data`` after checking that they are alike (one
    timeframe, one horizon, each set's bars of its own symbol)."""
    if len(data) < 2:
        raise ValueError(f"a multi-symbol model needs at least 2 symbols, got {list(data)}")
    for symbol, train_set in data.items():
        if train_set.bars.symbol != symbol:
            raise ValueError(f"the set of {symbol} holds bars of {train_set.bars.symbol}")
    if len({s.bars.tf for s in data.values()}) != 1 or len({s.horizon for s in data.values()}) != 1:
        raise ValueError("every symbol of a multi-symbol model has one timeframe and horizon")
    return tuple(data)


def family_class(name: str) -> type[MultiFamily]:
    try:
        module_name, class_name = _MULTI_MODULES[name]
    except KeyError:
        raise ValueError(
            f"family {name!r} does not train over several symbols; those that do: "
            f"{list(_MULTI_MODULES)}"
        ) from None
    cls: type[MultiFamily] = getattr(importlib.import_module(module_name), class_name)
    return cls


class MultiCalibrated:
    """``p_up`` calibrated per symbol on its validation window; see the module docstring."""

    name: ClassVar[str] = "calibrated"
    inner_class: ClassVar[type[MultiFamily] | None] = None

    def __init__(self, inner: MultiFamily | None = None) -> None:
        if inner is None:
            if self.inner_class is None:
                raise TypeError("MultiCalibrated needs an inner family; use multi_family(name)")
            inner = self.inner_class()
        self.inner: MultiFamily = inner
        self.calibrators: dict[str, Calibrator] = {}
        self.report: dict[str, dict[str, Any]] = {}
        self.intervals: dict[str, Any] = {}  # symbol -> ConformalIntervals | None
        self.horizon: int | None = None

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.inner.symbols

    def fit_multi(self, data: Mapping[str, TrainSet]) -> FitInfo:
        method = check_method(dict(_first(data).params).get(CALIBRATION_KEY, DEFAULT_METHOD))
        own = {s: _without_calibration(d) for s, d in data.items()}
        info = self.inner.fit_multi(own)
        for symbol, train_set in data.items():
            self._calibrate(symbol, train_set, method)
        summary = {f"calibration_{k}": v for k, v in _mean_report(self.report).items()}
        return FitInfo(info.best_iteration, info.val_loss, {**info.extra, **summary})

    def _calibrate(self, symbol: str, data: TrainSet, method: Any) -> None:
        val = np.asarray(data.val_idx, dtype=np.int64)
        visible = data.bars.slice(0, int(val[-1]) + 1)
        forecast = self.inner.predict(visible, val)
        raw = np.asarray(forecast.p_up, dtype=np.float64)
        up = realized_up(data.bars.close, val, data.horizon)
        calibrator = fit_calibrator(raw, up, method)
        self.calibrators[symbol] = calibrator
        self.horizon = data.horizon
        mu = np.asarray(forecast.mu, dtype=np.float64)
        self.intervals[symbol] = fit_intervals(data.bars, val, data.horizon, mu)
        self.report[symbol] = {
            "method": calibrator.method,
            "requested": method,
            "n_val": int(np.sum(~np.isnan(raw) & ~np.isnan(up))),
            "val_ece_raw": _finite(expected_calibration_error(raw, up, N_BINS)),
            "val_ece": _finite(expected_calibration_error(calibrator.apply(raw), up, N_BINS)),
        }

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        raw = self.inner.predict(bars, idx)
        calibrator = self.calibrators.get(bars.symbol, Calibrator())
        calibrated = Forecast(mu=raw.mu, p_up=calibrator.apply(raw.p_up), position=raw.position)
        if self.horizon is None:
            return calibrated
        intervals = self.intervals.get(bars.symbol)
        return with_quantiles(calibrated, intervals, bars, idx, self.horizon)

    def save(self, directory: Path) -> list[Path]:
        return self.inner.save(directory)

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Self:
        if cls.inner_class is None:
            raise TypeError("MultiCalibrated.load needs multi_family(name)")
        state = dict(meta.get("model", {}))
        stored = state.pop(CALIBRATION_KEY, {})
        intervals = state.pop(INTERVALS_KEY, {})
        model = cls(cls.inner_class.load(directory, {**meta, "model": state}))
        for symbol, entry in stored.items():
            model.calibrators[symbol] = Calibrator.from_dict(entry["calibrator"])
            model.report[symbol] = {k: v for k, v in entry.items() if k != "calibrator"}
        for symbol, entry in intervals.items():
            model.intervals[symbol], model.horizon = intervals_from_metadata(entry)
        return model

    def metadata(self) -> dict[str, Any]:
        state = self.inner.metadata()
        stored = {
            s: {**self.report.get(s, {}), "calibrator": c.to_dict()}
            for s, c in self.calibrators.items()
        }
        if self.horizon is None:
            return {**state, CALIBRATION_KEY: stored}
        intervals = {s: intervals_metadata(i, self.horizon) for s, i in self.intervals.items()}
        return {**state, CALIBRATION_KEY: stored, INTERVALS_KEY: intervals}


@functools.cache
def multi_family(name: str) -> type[MultiCalibrated]:
    """The multi-symbol class of family ``name``, ``p_up`` calibrated per symbol."""
    inner = family_class(name)
    namespace = {"name": inner.name, "inner_class": inner, "__module__": __name__}
    made = type(f"MultiCalibrated{inner.__name__}", (MultiCalibrated,), namespace)
    return cast(type[MultiCalibrated], made)


def _first(data: Mapping[str, TrainSet]) -> TrainSet:
    return next(iter(data.values()))


def _without_calibration(data: TrainSet) -> TrainSet:
    params = {k: v for k, v in data.params.items() if k != CALIBRATION_KEY}
    return dataclasses.replace(data, params=params)


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _mean_report(report: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The validation ECEs averaged over symbols (the fit summary's numbers)."""
    out: dict[str, Any] = {}
    for key in ("val_ece_raw", "val_ece"):
        values = [r[key] for r in report.values() if r.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    out["n_val"] = sum(int(r.get("n_val", 0)) for r in report.values())
    return out
