"""``p_up`` calibrated on the validation window: a wrapper around any family.

``calibrated_class(FamilyClass)`` gives a family class with the same ``name``
(model ids and the registry do not change) whose ``fit`` fits the inner
family, predicts the validation decisions, and fits a ``Calibrator``
(``quantum_daemon.core.calibration``: Platt by default, ``isotonic`` or
``identity`` through the constructor or the ``calibration`` hyper-parameter,
which the inner family never sees) on (raw ``p_up``, realized up) over the
validation window only: ``up = log(close[t+h] / close[t]) > 0``. The
splitter ends fitting's bars at the last validation target, so every
validation outcome is known and no test bar is read.

``predict`` applies the calibrator to the inner ``p_up``; ``mu`` and
``position`` are the inner family's. The same fit calibrates forecast
intervals on the validation window (``models.intervals``: split conformal
on volatility-scaled residuals of ``mu``), and ``predict`` adds their
``q05``/``q50``/``q95``; they are stored in ``metadata()["intervals"]``.
``save`` writes the inner family's files only: the calibrator is plain
numbers in ``metadata()["calibration"]`` beside the validation ECE before
and after (the latter in sample: the calibrator was fitted on those bars).
``load`` rebuilds both from the metadata; a version saved without
``calibration`` loads with the identity, one without ``intervals`` without
quantiles. Attributes the wrapper does not define (``rl_sizer``'s
``decide``, ...) are the inner model's.

numpy only: the inner family imports its own library.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, cast, get_args

import numpy as np

from quantum_daemon.core.calibration import (
    Calibrator,
    Method,
    expected_calibration_error,
    fit_calibrator,
)
from quantum_daemon.core.conformal import ConformalIntervals
from quantum_daemon.domain.bars import Bars
from quantum_daemon.models.base import Family, FitInfo, Forecast, TrainSet
from quantum_daemon.models.intervals import (
    INTERVALS_KEY,
    fit_intervals,
    intervals_from_metadata,
    intervals_metadata,
    with_quantiles,
)

CALIBRATION_KEY = "calibration"  # the hyper-parameter and the metadata key
DEFAULT_METHOD: Method = "platt"
N_BINS = 10


def realized_up(close: np.ndarray, idx: np.ndarray, horizon: int) -> np.ndarray:
    """1.0 where ``log(close[t+h] / close[t]) > 0``, 0.0 where not, NaN past the data."""
    idx = np.asarray(idx, dtype=np.int64)
    up = np.full(idx.shape, np.nan)
    known = idx + horizon < len(close)
    ahead = close[idx[known] + horizon] / close[idx[known]]
    up[known] = (np.log(ahead) > 0).astype(np.float64)
    return up


def check_method(method: Any) -> Method:
    if method not in get_args(Method):
        raise ValueError(f"unknown calibration method {method!r}; known: {get_args(Method)}")
    return cast(Method, method)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Calibrated:
    """The wrapper; use ``calibrated_class`` (or ``wrap``) for a concrete family."""

    name: ClassVar[str] = "calibrated"
    inner_class: ClassVar[type[Family] | None] = None

    def __init__(self, inner: Family | None = None, method: Method = DEFAULT_METHOD) -> None:
        if inner is None:
            if self.inner_class is None:
                raise TypeError("Calibrated needs an inner family; use calibrated_class(cls)")
            inner = self.inner_class()
        self.inner: Family = inner
        self.method: Method = check_method(method)
        self.calibrator = Calibrator()
        self.report: dict[str, Any] = {"method": "identity", "n_val": 0}
        self.intervals: ConformalIntervals | None = None
        self.horizon: int | None = None

    def fit(self, data: TrainSet) -> FitInfo:
        params = dict(data.params)
        method = check_method(params.pop(CALIBRATION_KEY, self.method))
        info = self.inner.fit(dataclasses.replace(data, params=params))
        val = np.asarray(data.val_idx, dtype=np.int64)
        visible = data.bars.slice(0, int(val[-1]) + 1) if val.size else data.bars
        raw_forecast = self.inner.predict(visible, val)
        raw = np.asarray(raw_forecast.p_up, dtype=np.float64)
        up = realized_up(data.bars.close, val, data.horizon)
        self.horizon = data.horizon
        self.intervals = fit_intervals(
            data.bars, val, data.horizon, np.asarray(raw_forecast.mu, dtype=np.float64)
        )
        self.method = method
        self.calibrator = fit_calibrator(raw, up, method)
        self.report = {
            "method": self.calibrator.method,
            "requested": method,
            "n_val": int(np.sum(~np.isnan(raw) & ~np.isnan(up))),
            "val_ece_raw": _finite(expected_calibration_error(raw, up, N_BINS)),
            "val_ece": _finite(expected_calibration_error(self.calibrator.apply(raw), up, N_BINS)),
        }
        summary = {f"calibration_{k}": v for k, v in self.report.items()}
        if self.intervals is not None:
            summary["intervals_n_cal"] = self.intervals.n_cal
        return FitInfo(info.best_iteration, info.val_loss, {**info.extra, **summary})

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        raw = self.inner.predict(bars, idx)
        calibrated = Forecast(
            mu=raw.mu, p_up=self.calibrator.apply(raw.p_up), position=raw.position
        )
        if self.horizon is None:
            return calibrated
        return with_quantiles(calibrated, self.intervals, bars, idx, self.horizon)

    def save(self, directory: Path) -> list[Path]:
        return self.inner.save(directory)

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Calibrated:
        if cls.inner_class is None:
            raise TypeError("Calibrated.load needs calibrated_class(cls)")
        state = dict(meta.get("model", {}))
        stored = state.pop(CALIBRATION_KEY, None)
        intervals, horizon = intervals_from_metadata(state.pop(INTERVALS_KEY, None))
        inner = cls.inner_class.load(directory, {**meta, "model": state})
        if stored is None:
            model = cls(inner, "identity")
        else:
            method = check_method(stored.get("requested", stored["calibrator"]["method"]))
            model = cls(inner, method)
            model.calibrator = Calibrator.from_dict(stored["calibrator"])
            model.report = {k: v for k, v in stored.items() if k not in ("calibrator", "n_bins")}
        model.intervals, model.horizon = intervals, horizon
        return model

    def metadata(self) -> dict[str, Any]:
        state = self.inner.metadata()
        for key in (CALIBRATION_KEY, INTERVALS_KEY):
            if key in state:
                raise ValueError(f"{self.name}'s metadata already has a {key!r} key")
        stored = {**self.report, "n_bins": N_BINS, "calibrator": self.calibrator.to_dict()}
        if self.horizon is None:
            return {**state, CALIBRATION_KEY: stored}
        intervals = intervals_metadata(self.intervals, self.horizon)
        return {**state, CALIBRATION_KEY: stored, INTERVALS_KEY: intervals}

    def __getattr__(self, attr: str) -> Any:
        # Only reached for attributes the wrapper lacks; never for dunders or
        # before __init__ set ``inner`` (copy and pickle probe those).
        if attr.startswith("__") or "inner" not in self.__dict__:
            raise AttributeError(attr)
        return getattr(self.__dict__["inner"], attr)

    def __repr__(self) -> str:
        return f"Calibrated({self.inner!r}, {self.calibrator.method})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The per-family class is made at run time: pickle rebuilds it from the inner class.
        return (wrap, (self.inner, self.method), dict(self.__dict__))


@functools.cache
def calibrated_class(inner_class: type[Family]) -> type[Calibrated]:
    """A ``Calibrated`` subclass for ``inner_class``, with its ``name``."""
    namespace = {"name": inner_class.name, "inner_class": inner_class, "__module__": __name__}
    made = type(f"Calibrated{inner_class.__name__}", (Calibrated,), namespace)
    return cast(type[Calibrated], made)


def wrap(inner: Family, method: Method = DEFAULT_METHOD) -> Calibrated:
    """``inner`` (fitted or not) inside its calibrated class."""
    return calibrated_class(type(inner))(inner, method)
