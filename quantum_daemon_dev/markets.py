"""Synthetic markets for tests and benchmarks: seeded, hourly, realistic
enough to fool a model that looks for patterns that are not there.

``garch_walk``: a random walk with GARCH(1,1)-like volatility clustering
(``v_t^2 = 1e-6 + 0.1 r_{t-1}^2 + 0.85 v_{t-1}^2``). With ``trend`` it has
a planted time-series momentum edge: a drift of ``trend`` per bar whose
sign flips every ``flip_every`` bars, so buy-and-hold gains nothing from it
and only a model that follows the current drift does.
"""

from __future__ import annotations

import numpy as np

from quantum_daemon.domain.bars import Bars

START_MS = 1_704_067_200_000  # 2024-01-01
HOUR_MS = 3_600_000


def garch_walk(
    n: int,
    seed: int,
    symbol: str = "BTCUSDT",
    trend: float = 0.0,
    flip_every: int = 120,
    start_ms: int = START_MS,
) -> Bars:
    rng = np.random.default_rng(seed)
    r = np.empty(n)
    v, prev = 0.005, 0.0
    sign = rng.choice([-1.0, 1.0])
    for k in range(n):
        v = np.sqrt(1e-6 + 0.1 * prev**2 + 0.85 * v**2)
        drift = trend * sign * (1 if (k // flip_every) % 2 == 0 else -1)
        r[k] = drift + v * rng.standard_normal()
        prev = r[k] - drift
    close = 100.0 * np.exp(np.cumsum(r))
    return hourly_bars(symbol, close, rng, start_ms)


def hourly_bars(
    symbol: str, close: np.ndarray, rng: np.random.Generator, start_ms: int = START_MS
) -> Bars:
    """OHLCV around ``close``: open at the previous close, a random spread."""
    n = len(close)
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0, 0.002, n)) * close
    return Bars(
        symbol=symbol,
        tf="1h",
        ts=start_ms + HOUR_MS * np.arange(n, dtype=np.int64),
        open=open_,
        high=np.maximum(open_, close) + spread,
        low=np.minimum(open_, close) - spread,
        close=close,
        volume=rng.uniform(10, 20, n),
    )
