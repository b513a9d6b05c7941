"""Shared fixtures: a real, private redis-server per test session (flushed
per test), and small factories for bars."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis

from quantum_daemon.domain.bars import Bars
from quantum_daemon_dev.redis_server import RedisServer, running_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session's private Redis, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def make_bars(
    n: int,
    seed: int = 0,
    tf: str = "1h",
    symbol: str = "TESTUSDT",
    start_ms: int = 1_704_067_200_000,
    drift: float = 0.0,
    vol: float = 0.01,
) -> Bars:
    """A random-walk bar series with consistent OHLC (high >= max(o, c), ...)."""
    from quantum_daemon.domain.timeframes import timeframe_ms

    rng = np.random.default_rng(seed)
    log_ret = drift + vol * rng.standard_normal(n)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.standard_normal(n)) * vol * 0.5
    high = np.maximum(open_, close) * (1 + spread)
    low = np.minimum(open_, close) * (1 - spread)
    volume = rng.lognormal(mean=3.0, sigma=0.5, size=n)
    ts = start_ms + np.arange(n, dtype=np.int64) * timeframe_ms(tf)
    return Bars(symbol, tf, ts, open_, high, low, close, volume)


@pytest.fixture
def bars_factory():
    return make_bars
