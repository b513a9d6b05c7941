"""Small factories for the feed tests: a clock the test moves, configs, a
running feed, and what the streams and the store hold."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from quantum_daemon.domain.config import (
    Config,
    FeedConfig,
    IngestConfig,
    RedisConfig,
    StorageConfig,
)
from quantum_daemon.ingest.feed.service import FeedService
from quantum_daemon.storage.bar_store import Bar, BarStore
from tests.binance_server import BinanceData
from tests.ingest_helpers import KEYS, ingest_service

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def ms(iso: str) -> int:
    """Epoch ms of an ISO time in UTC ("2024-09-06T04:30")."""
    return int(datetime.fromisoformat(iso + "+00:00").timestamp() * 1000)


class ManualClock:
    """The feed's clock in tests: it reads what the test set, and a feed
    asleep until a time wakes when the test moves the clock past it."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms
        self._moved: asyncio.Event | None = None

    def now_ms(self) -> int:
        return self.now

    def move_to(self, now_ms: int) -> None:
        self.now = now_ms
        if self._moved is not None:
            self._moved.set()

    async def sleep_until(self, stop: asyncio.Event, at_ms: int) -> None:
        while self.now < at_ms and not stop.is_set():
            self._moved = asyncio.Event()
            waits = [asyncio.ensure_future(self._moved.wait()), asyncio.ensure_future(stop.wait())]
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()


def feed_config(redis_url: str, api_url: str, data_dir: Path | None = None, **feed: Any) -> Config:
    """The feed on the fake server, short retries; ingest reads its streams."""
    settings: dict[str, Any] = {
        "enabled": False,
        "symbols": ("BTC/USDT",),
        "timeframes": ("1h",),
        "api_url": api_url,
        "retry_base_s": 0.05,
        "retry_max_s": 0.2,
        "request_timeout_s": 5.0,
    }
    settings.update(feed)
    return Config(
        redis=RedisConfig(url=redis_url, reconnect_max_s=0.5),
        storage=StorageConfig(data_dir=data_dir or Path("unused")),
        ingest=IngestConfig(symbols=SYMBOLS, timeframes=("1h",), block_ms=50),
        feed=FeedConfig(**settings),
    )


@contextlib.asynccontextmanager
async def running_feed(
    config: Config, clock: ManualClock, store: BarStore | None = None
) -> AsyncIterator[tuple[FeedService, asyncio.Task[None], asyncio.Event]]:
    """A feed running in this event loop; stopped (and awaited) on exit."""
    client = aioredis.Redis.from_url(config.redis.url, socket_timeout=5)
    newest = store.last_ts if store is not None else dict
    stop = asyncio.Event()
    try:
        async with FeedService(config, client, newest, clock=clock) as feed:
            task = asyncio.create_task(feed.run(stop))
            try:
                yield feed, task, stop
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
    finally:
        await client.aclose()


async def until(check: Any, within: float = 20.0, what: str = "", task: Any = None) -> None:
    """Wait for ``check()``; fail early if ``task`` (the feed) ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if task is not None and task.done():
            task.result()
            raise AssertionError(f"the feed ended before {what}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def stream_ts(client: redis.Redis, symbol: str, tf: str = "1h") -> list[int]:
    return [int(fields[b"ts"]) for _, fields in client.xrange(KEYS.bars(symbol, tf))]


def stream_values(client: redis.Redis, symbol: str, tf: str = "1h") -> list[tuple[str, ...]]:
    names = (b"ts", b"open", b"high", b"low", b"close", b"volume")
    return [
        tuple(fields[n].decode() for n in names)
        for _, fields in client.xrange(KEYS.bars(symbol, tf))
    ]


def recorded_bars(data: BinanceData, symbol: str, first: int = 0, end: int | None = None) -> list:
    """The fixture's closed hourly bars as the store holds them."""
    return [Bar(symbol, "1h", *bar) for bar in data.closed_bars(symbol)[first:end]]


async def ingest_all(config: Config, store: BarStore) -> Any:
    """The daemon's ingest, run until nothing is left on the streams."""
    async with ingest_service(config, store) as service:
        return await service.run_until_idle()
