"""The worker side of ``simulate``: a version's forecasts over a span of
bars in one batch call, and the sizer's decisions of one bar; both run in a
training worker (model code never runs in the simulating process).

The window is what the live inference worker reads for a backlog of the same
bars (``inference.worker.BarWindows``): ``context_bars`` before the first
bar to predict, then the bars to predict. Every family's ``predict`` is
causal (row ``t`` uses bars ``0..t``; tests/test_trees.py and the families'
probes), so a forecast never depends on a later bar of the span.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.domain.bars import Bars
from quantum_daemon.models.sizer_book import SizerBook, next_decision

MODEL_CACHE = 32  # versions a worker keeps loaded between calls
_loaded: OrderedDict[tuple[str, int, int], tuple[Any, dict[str, Any]]] = OrderedDict()


@dataclass(frozen=True)
class PredictSpec:
    job_id: str
    family: str
    path: str  # the version folder
    bars: Bars  # context then the bars to predict
    first: int  # index in ``bars`` of the first bar to predict
    # context features: the reference symbols' bars over the same span
    reference: Mapping[str, Bars] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictResult:
    mu: np.ndarray
    p_up: np.ndarray
    position: np.ndarray | None
    horizon: int
    quantiles: np.ndarray | None = None  # (n, 3): q05, q50, q95, where the version has them


def predict_span(spec: PredictSpec) -> PredictResult:
    """Forecast ``bars[first:]`` with the version at ``spec.path``."""
    model, meta = loaded_model(spec.path)
    if spec.reference:
        from quantum_daemon.core.context_features import ContextSpec, FeatureContext
        from quantum_daemon.models.families import use_context

        use_context(model, FeatureContext(ContextSpec(), spec.reference))
    idx = np.arange(spec.first, len(spec.bars))
    forecast = model.predict(spec.bars, idx)
    position = None if forecast.position is None else np.asarray(forecast.position, np.float64)
    quantiles = None
    if forecast.q05 is not None and forecast.q50 is not None and forecast.q95 is not None:
        quantiles = np.column_stack([forecast.q05, forecast.q50, forecast.q95]).astype(np.float64)
    return PredictResult(
        mu=np.asarray(forecast.mu, np.float64),
        p_up=np.asarray(forecast.p_up, np.float64),
        position=position,
        horizon=int(meta.get("horizon", 1)),
        quantiles=quantiles,
    )


@dataclass(frozen=True)
class SizeRequest:
    """One sizer version's decision on one series' bar: ``bars`` end with the
    decision bar (``context_bars`` before it, as the live worker's window)."""

    key: tuple[str, str, str]  # model_id, version, symbol
    path: str
    bars: Bars
    mu: float  # the ensemble's forecast at the bar
    p_up: float
    held: SizerBook | None  # the book after this sizer's previous decision


@dataclass(frozen=True)
class SizeSpec:
    job_id: str
    requests: tuple[SizeRequest, ...]
    cost_rate: float
    family: str = "rl_sizer"


def size_bar(spec: SizeSpec) -> list[SizerBook]:
    """Every request's decision, through the live worker's ``next_decision``."""
    from quantum_daemon.models.rl_sizer import volatility

    out = []
    for r in spec.requests:
        model, _ = loaded_model(r.path)
        last = len(r.bars) - 1
        vol = float(volatility(r.bars, np.array([last]))[0])
        out.append(next_decision(model, r.held, r.bars, last, (r.mu, r.p_up, vol), spec.cost_rate))
    return out


def loaded_model(path: str) -> tuple[Any, dict[str, Any]]:
    """The version at ``path``, loaded once per worker (checksums verified on
    the first load). A version folder never changes once written; the key
    holds its metadata file's inode and mtime so that a folder written anew
    at the same path (a second simulation into the same folder) is loaded anew."""
    from quantum_daemon.models.families import load_model
    from quantum_daemon.storage.artifacts import METADATA_FILE

    stat = (Path(path) / METADATA_FILE).stat()
    key = (path, stat.st_ino, stat.st_mtime_ns)
    if key in _loaded:
        _loaded.move_to_end(key)
        return _loaded[key]
    model, meta = load_model(Path(path))
    _loaded[key] = (model, dict(meta))
    while len(_loaded) > MODEL_CACHE:
        _loaded.popitem(last=False)
    return _loaded[key]
