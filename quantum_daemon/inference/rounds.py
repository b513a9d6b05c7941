"""From settled predictions to trust rounds: pure, no I/O, no clock.

A prediction made at the close of bar ``t`` is settled by a later bar:

- a forecast (``mu``, ``p_up`` of the log return over ``horizon`` bars) by
  bar ``t + horizon``: its loss is the Brier score of ``p_up`` against the
  realized return ``log(close[t + h] / close[t])`` (``scoring.score_forecast``);
- a position (``evo_model``, ``rl_sizer``) by bar ``t + 1``: its loss compares
  the position's costed return over that bar with the plain rule's position
  on the same signal (``scoring.score_position``), on the same [0, 1] scale.

A forecast with intervals is also scored by the pinball loss of its
``q05``/``q50``/``q95`` and whether ``[q05, q95]`` covered the return (not
part of the trust loss: the live coverage per version).

A settling bar that is missing from the store (a gap) makes the prediction
void: it is never scored. Scores are grouped by their settling bar: one
trust round per bar, at that bar's close time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from quantum_daemon.core.conformal import LEVELS, pinball_loss
from quantum_daemon.core.ensemble import plain_position
from quantum_daemon.core.evaluation.backtest import DEFAULT_POSITION_THRESHOLD
from quantum_daemon.core.scoring import (
    bar_net_return,
    realized_log_return,
    return_scale,
    score_forecast,
    score_position,
)
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.stages import Stage
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.storage.prediction_records import DuePrediction, Settled
from quantum_daemon.storage.trust_store import Score

SCALE_WINDOW = 96  # one-bar returns behind the decision that set a position score's scale


def due_ts(ts: int, horizon: int, step_ms: int, is_position: bool) -> int:
    """Open time of the bar whose close settles a prediction made at bar ``ts``."""
    return ts + (1 if is_position else horizon) * step_ms


def settle(
    due: Sequence[DuePrediction],
    bars: Bars,
    cost_rate: float,
    threshold: float = DEFAULT_POSITION_THRESHOLD,
) -> list[Settled]:
    """The loss of every due prediction (None: void) and the costed return
    of its position over the bar after it (``record_return``); ``bars`` must
    hold the decision and settling bars and ``SCALE_WINDOW`` bars before the
    first decision."""
    where = {int(ts): i for i, ts in enumerate(bars.ts)}
    step = timeframe_ms(bars.tf)
    out: list[Settled] = []
    for p in due:
        i, j = where.get(p.ts), where.get(p.due_ts)
        if i is None or j is None:
            out.append(Settled(p.model_id, p.version, p.symbol, p.ts, None))
            continue
        loss = _loss(p, bars.close, i, j, cost_rate)
        k = where.get(p.ts + step)
        net = None if k is None else record_return(p, bars.close, i, k, cost_rate, threshold)
        pinball, covered = interval_score(p, bars.close, i, j)
        out.append(Settled(p.model_id, p.version, p.symbol, p.ts, loss, net, pinball, covered))
    return out


def interval_score(
    p: DuePrediction, close: np.ndarray, i: int, j: int
) -> tuple[float | None, bool | None]:
    """(mean pinball loss of q05 / q50 / q95, outcome inside [q05, q95]) of
    a forecast with intervals against its realized horizon log return."""
    if p.quantiles is None or p.position is not None:
        return None, None
    realized = realized_log_return(float(close[i]), float(close[j]))
    losses = [
        float(pinball_loss(np.array([realized]), np.array([q]), level)[0])
        for q, level in zip(p.quantiles, LEVELS, strict=True)
    ]
    return math.fsum(losses) / len(losses), p.quantiles[0] <= realized <= p.quantiles[2]


def record_return(
    p: DuePrediction, close: np.ndarray, i: int, k: int, cost_rate: float, threshold: float
) -> float:
    """What the prediction earned for its model's record: the position it
    implies (a position family's own; a forecaster's by the plain rule),
    held over the next bar (``close[i] -> close[k]``), paying the cost of
    the change from the version's position one bar before (none: flat)."""
    if p.position is not None:
        position, previous = p.position, _or_flat(p.previous_position)
    else:
        position = plain_position(p.mu, p.p_up, threshold)
        previous = (
            0.0
            if p.previous_mu is None or p.previous_p_up is None
            else plain_position(p.previous_mu, p.previous_p_up, threshold)
        )
    return bar_net_return(position, previous, float(close[k] / close[i] - 1.0), cost_rate)


def _loss(p: DuePrediction, close: np.ndarray, i: int, j: int, cost_rate: float) -> float:
    if p.position is None:
        realized = realized_log_return(float(close[i]), float(close[j]))
        return score_forecast(p.mu, p.p_up, realized).loss
    own = (_or_flat(p.previous_position), p.position)
    plain = (_or_flat(p.previous_plain), _or_flat(p.plain))
    asset = float(close[j] / close[i] - 1.0)
    scale = return_scale(close[: i + 1], SCALE_WINDOW)
    return score_position(own, plain, asset, cost_rate, scale).loss


def _or_flat(position: float | None) -> float:
    """No record of a position means none was held (the backtest starts flat)."""
    return 0.0 if position is None or not math.isfinite(position) else position


def trust_rounds(
    due: Sequence[DuePrediction], settled: Sequence[Settled], step_ms: int
) -> list[tuple[int, list[Score]]]:
    """(round_ts, scores) per settling bar, oldest first; ``round_ts`` is that
    bar's close time. Candidates' scores are shadow scores (they move no weight)."""
    rounds: dict[int, list[Score]] = {}
    for p, s in zip(due, settled, strict=True):
        if s.loss is None:
            continue
        score = Score(
            family=p.family,
            model=p.model_id,
            version=p.version,
            symbol=p.symbol,
            bar_ts=p.ts,
            loss=s.loss,
            shadow=p.stage == Stage.CANDIDATE,
        )
        rounds.setdefault(p.due_ts + step_ms, []).append(score)
    return sorted(rounds.items())


def bars_needed(due: Sequence[DuePrediction], step_ms: int) -> tuple[int, int]:
    """[start_ms, end_ms) of the bars that settling ``due`` reads."""
    start = min(p.ts for p in due) - (SCALE_WINDOW + 1) * step_ms
    return start, max(p.due_ts for p in due) + 1
