"""The batch prediction job: one version's forecasts over a span of bars, in
a training worker (model code never runs in the simulating process).

The window is what the live inference worker reads for a backlog of the same
bars (``inference.worker.BarWindows``): ``context_bars`` before the first
bar to predict, then the bars to predict. Every family's ``predict`` is
causal (row ``t`` uses bars ``0..t``; tests/test_trees.py and the families'
probes), so a forecast never depends on a later bar of the span.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantum_daemon.domain.bars import Bars


@dataclass(frozen=True)
class PredictSpec:
    job_id: str
    family: str
    path: str  # the version folder
    bars: Bars  # context then the bars to predict
    first: int  # index in ``bars`` of the first bar to predict


@dataclass(frozen=True)
class PredictResult:
    mu: np.ndarray
    p_up: np.ndarray
    position: np.ndarray | None
    horizon: int


def predict_span(spec: PredictSpec) -> PredictResult:
    """Load the version (checksums verified) and forecast ``bars[first:]``."""
    from quantum_daemon.models.families import load_model

    model, meta = load_model(Path(spec.path))
    idx = np.arange(spec.first, len(spec.bars))
    forecast = model.predict(spec.bars, idx)
    position = None if forecast.position is None else np.asarray(forecast.position, np.float64)
    return PredictResult(
        mu=np.asarray(forecast.mu, np.float64),
        p_up=np.asarray(forecast.p_up, np.float64),
        position=position,
        horizon=int(meta.get("horizon", 1)),
    )
