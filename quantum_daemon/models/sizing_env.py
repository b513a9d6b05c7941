"""The sizing environment: the evaluator's costed simulator as a gymnasium env.

At each decision (a bar's close) the agent sees the ensemble signal and the
market state and chooses a position size in [-1, 1]; the position earns the
next bar's simple return and every change pays the cost rate on the traded
size, exactly as ``evaluation.backtest`` (``scoring.bar_net_return`` is that
backtest for one bar). Observation, five numbers:

- ``signal_z``: ``mu / (volatility sqrt(horizon))``, the signal in units of
  the horizon's typical move, clipped to [-5, 5];
- ``edge``: ``2 p_up - 1`` in [-1, 1];
- ``vol_regime``: ``log(volatility / vol_ref)``, clipped to [-5, 5], where
  ``vol_ref`` is the training window's median volatility;
- ``drawdown``: equity / running peak - 1 of the episode's costed returns, in
  [-1, 0];
- ``position``: the position held from the previous bar.

Reward: ``reward_scale * (net - risk_penalty * net^2)`` with ``net`` the
bar's costed return; ``info["net_return"]`` always carries ``net`` itself.
An episode is ``episode_length`` consecutive decisions from a random start
(or ``options={"start": k}``), from flat, truncated at its end.

``Book`` and ``observe`` are shared with live sizing, so the policy sees the
same numbers in the daemon as in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from quantum_daemon.core.scoring import bar_net_return

OBS_LOW = np.array([-5.0, -1.0, -5.0, -1.0, -1.0], dtype=np.float32)
OBS_HIGH = np.array([5.0, 1.0, 5.0, 0.0, 1.0], dtype=np.float32)
MIN_VOL = 1e-8


@dataclass(frozen=True)
class SizingData:
    """Per decision, in time order: the signal, the volatility known at the
    decision, and the simple return of the bar after it."""

    mu: np.ndarray
    p_up: np.ndarray
    volatility: np.ndarray
    asset_returns: np.ndarray

    def __post_init__(self) -> None:
        n = self.asset_returns.shape[0]
        if any(a.shape != (n,) for a in (self.mu, self.p_up, self.volatility)):
            raise ValueError("mu, p_up, volatility and asset_returns need one value per decision")

    def __len__(self) -> int:
        return int(self.asset_returns.shape[0])


@dataclass(frozen=True)
class EnvSettings:
    """How the simulator charges and rewards; ``vol_ref`` and ``horizon`` scale
    the observation."""

    cost_rate: float
    horizon: int
    vol_ref: float
    episode_length: int = 256
    risk_penalty: float = 0.0
    reward_scale: float = 1.0


@dataclass(frozen=True)
class Book:
    """The sizer's account: position held, equity, running peak of equity."""

    position: float = 0.0
    equity: float = 1.0
    peak: float = 1.0

    @property
    def drawdown(self) -> float:
        return min(0.0, max(-1.0, self.equity / self.peak - 1.0))

    def hold(self, position: float, asset_return: float, rate: float) -> tuple[Book, float]:
        """Move to ``position`` (paying for the change) and hold it over a bar
        returning ``asset_return``; the new book and the bar's costed return."""
        net = bar_net_return(position, self.position, asset_return, rate)
        equity = max(self.equity * (1.0 + net), 1e-12)
        return replace(self, position=position, equity=equity, peak=max(self.peak, equity)), net


def observe(
    mu: float, p_up: float, volatility: float, book: Book, settings: EnvSettings
) -> np.ndarray:
    """The observation at a decision (module docstring); missing numbers
    (NaN: no signal yet, volatility in warm-up) read as no information."""
    vol = volatility if math.isfinite(volatility) and volatility > 0 else settings.vol_ref
    vol = max(vol, MIN_VOL)
    signal_z = 0.0 if not math.isfinite(mu) else mu / (vol * math.sqrt(settings.horizon))
    edge = 0.0 if not math.isfinite(p_up) else 2.0 * p_up - 1.0
    regime = math.log(vol / max(settings.vol_ref, MIN_VOL))
    raw = np.array([signal_z, edge, regime, book.drawdown, book.position], dtype=np.float32)
    return np.clip(raw, OBS_LOW, OBS_HIGH)


class SizingEnv(gym.Env[np.ndarray, np.ndarray]):
    """One symbol's decisions as episodes for a position-sizing policy."""

    def __init__(self, data: SizingData, settings: EnvSettings) -> None:
        if len(data) < 2:
            raise ValueError("a sizing environment needs at least two decisions")
        self.metadata = {"render_modes": []}  # no rendering
        self.data = data
        self.settings = settings
        self.observation_space = gym.spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._t = 0
        self._end = 0
        self._book = Book()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        length = min(self.settings.episode_length, len(self.data))
        start = (options or {}).get("start")
        if start is None:
            start = int(self.np_random.integers(0, len(self.data) - length + 1))
        self._t, self._end, self._book = (
            int(start),
            min(int(start) + length, len(self.data)),
            Book(),
        )
        return self._observation(), {}

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        position = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        asset_return = float(self.data.asset_returns[self._t])
        self._book, net = self._book.hold(position, asset_return, self.settings.cost_rate)
        self._t += 1
        truncated = self._t >= self._end
        reward = self.settings.reward_scale * (net - self.settings.risk_penalty * net * net)
        info = {"net_return": net, "position": position}
        return self._observation(), float(reward), False, truncated, info

    def _observation(self) -> np.ndarray:
        k = min(
            self._t, len(self.data) - 1
        )  # after the last step: a placeholder the agent never acts on
        d = self.data
        return observe(
            float(d.mu[k]), float(d.p_up[k]), float(d.volatility[k]), self._book, self.settings
        )


def rollout(decide: Any, data: SizingData, settings: EnvSettings) -> tuple[np.ndarray, np.ndarray]:
    """Run a policy over every decision of ``data`` from a flat book (no
    episodes); ``decide(obs) -> position``. Positions and costed returns."""
    book = Book()
    positions = np.empty(len(data))
    nets = np.empty(len(data))
    for k in range(len(data)):
        obs = observe(
            float(data.mu[k]), float(data.p_up[k]), float(data.volatility[k]), book, settings
        )
        positions[k] = float(np.clip(decide(obs), -1.0, 1.0))
        book, nets[k] = book.hold(positions[k], float(data.asset_returns[k]), settings.cost_rate)
    return positions, nets
