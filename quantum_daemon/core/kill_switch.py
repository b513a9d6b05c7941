"""The kill switch: the published position goes flat while the live
ensemble forecasts worse than knowing nothing (issue #13, docs/judge.md).

Per series, the Brier score of every published live signal's ``p_up`` is
taken once its horizon has elapsed; the switch looks at the mean over the
last ``window`` of them. The naive forecast, ``p_up = 0.5``, scores 0.25 on
every bar. The switch fires when the rolling mean exceeds ``0.25 + margin``
(with a full window) and is released when it is back at or below 0.25: a
band between the two, so that it does not flap. While it is on, signals
are still computed and recorded (their losses are what releases it) but
the published position is 0.

No I/O, no clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from quantum_daemon.core.scoring import realized_log_return, score_forecast

NAIVE_BRIER = 0.25  # the Brier score of p_up = 0.5, whatever happens


def ensemble_loss(p_up: float, close_at_decision: float, close_at_horizon: float) -> float:
    """The Brier score of a published ``p_up`` once its horizon has elapsed."""
    realized = realized_log_return(close_at_decision, close_at_horizon)
    return score_forecast(0.0, p_up, realized).brier


@dataclass(frozen=True)
class KillChange:
    """The switch turned on (``killed``) or off for a series."""

    killed: bool
    rolling_brier: float
    bars: int
    reason: str


class KillSwitch:
    """One rolling window per series; see the module docstring."""

    def __init__(self, window: int, margin: float) -> None:
        self.window = window
        self.margin = margin
        self._losses: dict[tuple[str, str], deque[float]] = {}
        self.killed: dict[tuple[str, str], str] = {}  # series -> why it is flat

    def observe(self, series: tuple[str, str], loss: float) -> KillChange | None:
        """One scored live signal of the series; a change of the switch, if any."""
        if self.window == 0 or not math.isfinite(loss):
            return None
        losses = self._losses.setdefault(series, deque(maxlen=self.window))
        losses.append(loss)
        mean = math.fsum(losses) / len(losses)
        if series not in self.killed and len(losses) == self.window:
            if mean > NAIVE_BRIER + self.margin:
                reason = (
                    f"kill switch: ensemble Brier {mean:.4f} over {len(losses)} bars is worse "
                    f"than the naive {NAIVE_BRIER} by more than {self.margin}"
                )
                self.killed[series] = reason
                return KillChange(True, mean, len(losses), reason)
        elif series in self.killed and mean <= NAIVE_BRIER:
            del self.killed[series]
            reason = f"ensemble Brier {mean:.4f} over {len(losses)} bars is back at the naive's"
            return KillChange(False, mean, len(losses), reason)
        return None

    def rolling(self, series: tuple[str, str]) -> tuple[float, int] | None:
        losses = self._losses.get(series)
        if not losses:
            return None
        return math.fsum(losses) / len(losses), len(losses)
