"""Pure helpers of the inference worker: bar windows, model outputs, answers.

No I/O. numpy is imported inside the functions: the worker imports this
module before its thread counts are pinned.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.stages import Stage
from quantum_daemon.inference.messages import ModelAnswer, PredictAnswer, PredictRequest

if TYPE_CHECKING:
    import numpy as np

    from quantum_daemon.domain.bars import Bars
    from quantum_daemon.inference.loading import LiveModel

Ensemble = tuple[list[float], list[float]]  # per bar: pooled mu, pooled p_up


def concat_bars(a: Bars, b: Bars) -> Bars:
    import numpy as np

    from quantum_daemon.domain.bars import Bars

    columns = ("ts", "open", "high", "low", "close", "volume")
    joined = {c: np.concatenate([getattr(a, c), getattr(b, c)]) for c in columns}
    return Bars(a.symbol, a.tf, **joined)


def newer_indices(ts: np.ndarray, after_ts: int | None, limit: int) -> np.ndarray:
    """Indices of the bars after ``after_ts`` (the newest bar when None), at most ``limit``."""
    import numpy as np

    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    if after_ts is None:
        return np.array([len(ts) - 1], dtype=np.int64)
    return np.flatnonzero(ts > after_ts)[-limit:]


def forecast(live: LiveModel, bars: Bars, idx: np.ndarray) -> ModelAnswer:
    fc = live.model.predict(bars, idx)
    position = None if fc.position is None else tuple(float(v) for v in fc.position)
    answer = model_answer(
        live, tuple(float(v) for v in fc.mu), tuple(float(v) for v in fc.p_up), position
    )
    return replace(answer, quantiles=quantile_rows(fc.q05, fc.q50, fc.q95))


def quantile_rows(
    q05: np.ndarray | None, q50: np.ndarray | None, q95: np.ndarray | None
) -> tuple[tuple[float, float, float], ...] | None:
    """Per bar (q05, q50, q95); None unless all three are given and finite
    (too short a history for the volatility: the forecast stands without them)."""
    if q05 is None or q50 is None or q95 is None:
        return None
    rows = tuple((float(a), float(b), float(c)) for a, b, c in zip(q05, q50, q95, strict=True))
    if not all(math.isfinite(v) for row in rows for v in row):
        return None
    return rows


def collect(
    answers: list[ModelAnswer],
    errors: list[tuple[str, str]],
    live: LiveModel,
    ask: Callable[[], ModelAnswer],
    log: Any,
) -> None:
    """Run one model; its failure is recorded, the others still answer."""
    try:
        answer = ask()
        check_finite(answer)
        answers.append(answer)
    except Exception as exc:
        errors.append((live.info.model_id, f"{type(exc).__name__}: {exc}"))
        log.debug(
            "inference.model_failed",
            model_id=live.info.model_id,
            error=repr(exc),
            trace=traceback.format_exc(limit=3),
        )


def check_finite(answer: ModelAnswer) -> None:
    values = [*answer.mu, *answer.p_up, *(answer.position or ())]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("non-finite forecast")
    if not all(0.0 <= p <= 1.0 for p in answer.p_up):
        raise ValueError("p_up outside [0, 1]")


def ensemble_input(
    answers: Sequence[ModelAnswer], weights: Sequence[Mapping[str, float]]
) -> Ensemble | None:
    """Per bar, the pool of the active forecasters under that bar's trust
    ``weights``: what the daemon publishes as the signal, and what the sizer
    sizes."""
    from quantum_daemon.core.ensemble import MemberForecast, combine

    active = [a for a in answers if a.stage == Stage.ACTIVE and a.family not in SIZER_FAMILIES]
    if not active:
        return None
    mus, ps = [], []
    for k in range(len(active[0].mu)):
        pooled = combine(
            [MemberForecast(a.family, a.model_id, a.version, a.mu[k], a.p_up[k]) for a in active],
            weights[k],
        )
        mus.append(pooled.mu)
        ps.append(pooled.p_up)
    return mus, ps


def model_answer(
    live: LiveModel,
    mu: tuple[float, ...],
    p_up: tuple[float, ...],
    position: tuple[float, ...] | None,
) -> ModelAnswer:
    info = live.info
    return ModelAnswer(
        info.model_id, info.family, info.version, info.stage, info.horizon, mu, p_up, position
    )


def predict_answer(
    request: PredictRequest,
    bars: Bars,
    idx: np.ndarray,
    answers: Sequence[ModelAnswer],
    errors: Sequence[tuple[str, str]],
    started: tuple[float, float],
) -> PredictAnswer:
    """The answer to ``request`` on the bars at ``idx``; ``started`` is
    (``perf_counter``, ``process_time``) when the request came in."""
    return PredictAnswer(
        request_id=request.request_id,
        symbol=request.symbol,
        tf=request.tf,
        ts=tuple(int(v) for v in bars.ts[idx]),
        close=tuple(float(v) for v in bars.close[idx]),
        models=tuple(answers),
        errors=tuple(errors),
        worker_s=time.perf_counter() - started[0],
        cpu_s=time.process_time() - started[1],
    )
