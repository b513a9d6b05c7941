"""What the daemon and the inference worker say to each other over their pipe.

Small frozen dataclasses of plain Python values (no numpy), pickled by
``multiprocessing.Connection``. The daemon sends ``PredictRequest`` (or
``None`` to stop); the worker answers ``LoadReport`` whenever its set of
loaded models changed (and once at start), and one ``PredictAnswer`` or
``RequestFailed`` per request.

This module is imported by the worker before its thread counts are pinned:
it must stay free of numpy and model libraries.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from quantum_daemon.domain.stages import Stage
from quantum_daemon.domain.timeframes import timeframe_ms

MULTI_SYMBOL = "multi"  # the symbol part of ``{family}_multi_{TF}``: a model over several symbols

WeightSet = tuple[tuple[str, float], ...]  # (family, weight); empty: uniform over the members
WeightsAt = tuple[tuple[int, WeightSet], ...]  # (from close time, weights), ascending


@dataclass(frozen=True)
class InferenceWorkerSettings:
    """How the worker runs. ``family_classes`` maps a family name to a
    ``"module:Class"`` that replaces its registered class: a test-only hook
    (planted experts); the daemon never sets it."""

    data_dir: str
    store_path: str
    horizon: int = 24  # for versions whose metadata has none
    cost_rate: float = 0.0012  # the evaluator's (fee + slippage) per unit traded
    context_bars: int = 512  # history read before the first bar to predict
    max_candidates: int = 2  # newest candidates of a model held in shadow
    threads: int = 1
    seed: int = 42
    log_level: str = "info"
    log_format: str = "json"
    family_classes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PredictRequest:
    """Predict the bars of ``symbol``/``tf`` stored after ``after_ts`` (open
    time; ``None``: the newest bar only), at most ``max_bars`` of them.

    ``weights`` are the current trust weights. ``weights_at`` is empty when
    every bar of the request is pooled with them (the live case: one new
    bar); otherwise it holds the trust weights as of the request's bars
    (``timeline.WeightTimeline.for_request``), and each bar is pooled with
    the entry of the latest start at or before its close. The worker's sizer
    and the published signal use the same ``bar_weights``."""

    request_id: int
    symbol: str
    tf: str
    after_ts: int | None
    max_bars: int
    weights: WeightSet = ()
    weights_at: WeightsAt = ()

    def bar_weights(self, ts: Sequence[int]) -> list[dict[str, float]]:
        """The trust weights of each bar (open times ``ts``): see the class
        docstring; a bar closing before the first entry is pooled uniformly."""
        if not self.weights_at:
            return [dict(self.weights)] * len(ts)
        step = timeframe_ms(self.tf)
        starts = [start for start, _ in self.weights_at]
        chosen = [bisect_right(starts, t + step) - 1 for t in ts]
        sets = {k: dict(self.weights_at[k][1]) if k >= 0 else {} for k in set(chosen)}
        return [sets[k] for k in chosen]


@dataclass(frozen=True)
class ModelAnswer:
    """One live model's outputs, one value per answered bar. Position
    families (``evo_model``, ``rl_sizer``) fill ``position``; the sizer's
    ``mu``/``p_up`` are the ensemble values it sized. ``quantiles``: per bar
    (q05, q50, q95) of the horizon log return, where the version has
    forecast intervals."""

    model_id: str
    family: str
    version: str
    stage: Stage
    horizon: int
    mu: tuple[float, ...]
    p_up: tuple[float, ...]
    position: tuple[float, ...] | None = None
    quantiles: tuple[tuple[float, float, float], ...] | None = None


@dataclass(frozen=True)
class PredictAnswer:
    """The bars answered (open times ascending, their closes) and every live
    model's outputs on them; ``errors`` are (model_id, message) of models
    that failed on this request (the others still answered)."""

    request_id: int
    symbol: str
    tf: str
    ts: tuple[int, ...]
    close: tuple[float, ...]
    models: tuple[ModelAnswer, ...]
    errors: tuple[tuple[str, str], ...] = ()
    worker_s: float = 0.0  # wall time in the worker
    cpu_s: float = 0.0  # CPU time in the worker: the rest of worker_s was waiting for a core


@dataclass(frozen=True)
class RequestFailed:
    """The request as a whole failed (the bar store could not be read, ...)."""

    request_id: int
    error: str


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    family: str
    symbol: str
    tf: str
    version: str
    stage: Stage
    horizon: int


@dataclass(frozen=True)
class LoadProblem:
    """A version the worker did not load. ``refused``: its artifacts failed
    their sha256 check (the registry must refuse it); otherwise loading
    raised (an unknown family, a library error)."""

    model_id: str
    version: str
    reason: str
    refused: bool


@dataclass(frozen=True)
class LoadReport:
    """The models the worker now holds, and the versions it could not load."""

    pid: int
    loaded: tuple[LoadedModel, ...]
    problems: tuple[LoadProblem, ...] = ()
    load_s: float = 0.0


@dataclass(frozen=True)
class StartFailed:
    """The worker could not start (it exits next): why, for the daemon's
    ``inference.worker_died`` and crash-loop messages."""

    error: str


WorkerReply = PredictAnswer | RequestFailed | LoadReport
