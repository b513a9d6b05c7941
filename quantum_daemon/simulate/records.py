"""What a simulation remembers: each version's forecasts and live losses,
each bar's forecasts, weights and signal, and the lifecycle's timeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quantum_daemon.domain.stages import Stage

ACTIVE, CANDIDATE = Stage.ACTIVE, Stage.CANDIDATE  # the stages a forecast is made at


@dataclass
class Prediction:
    mu: float
    p_up: float
    position: float | None
    quantiles: tuple[float, float, float] | None = None  # q05, q50, q95


@dataclass
class VersionRecord:
    """A version's life in the simulation: its forecasts and live losses."""

    model_id: str
    family: str
    symbol: str
    version: str
    path: str
    trained_at: int  # bar index (of its series) of the training
    live_from: int
    horizon: int = 1
    predictions: dict[int, Prediction] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)  # bar ts -> live loss
    live_bars: int = 0


@dataclass
class TimelineEntry:
    ts: int  # close time of the bar at which it happened (epoch ms)
    kind: str
    model_id: str
    version: str
    detail: str = ""


@dataclass
class BarRecord:
    """What the loop and the variants knew at one bar of one series."""

    ts: int
    close: float
    forecasts: dict[tuple[str, str], tuple[str, Prediction]]  # (model, version) -> (stage, p)
    newest: dict[str, str]  # model_id -> newest trained version
    weights: dict[str, float]
    signal: dict[str, Any] | None
    symbol: str = ""  # of its series


Progress = Callable[[dict[str, Any]], None]


def signal_view(signal: dict[str, Any] | None) -> tuple[float, float, float] | None:
    """(mu, p_up, plain position) behind a simulated signal, as
    ``core.ensemble.Signal.view`` gives them live: the ensemble's, or where
    the signal is flat the shadow pool's (None: no signal, or no view)."""
    if signal is None:
        return None
    if signal.get("status", "live") != "flat":
        return float(signal["mu"]), float(signal["p_up"]), float(signal["plain_position"])
    shadow = signal.get("shadow")
    if shadow is None:
        return None
    return float(shadow["mu"]), float(shadow["p_up"]), float(shadow["plain_position"])
