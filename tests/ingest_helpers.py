"""Small factories for the ingest tests: configs, publishing, a running
service, and what Redis says about the consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import Config, IngestConfig, RedisConfig, StorageConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest import IngestMetrics, IngestService
from quantum_daemon.ingest.replay import publish_frame
from quantum_daemon.storage.bar_store import Bar, BarStore

KEYS = Keys()
GROUP = "quantum-daemon"


def make_config(redis_url: str, data_dir: Path | None = None, **ingest: Any) -> Config:
    """Defaults of the ingest section, with short waits so tests run fast."""
    settings: dict[str, Any] = {"symbols": ("BTCUSDT",), "timeframes": ("1h",), "block_ms": 50}
    settings.update(ingest)
    return Config(
        redis=RedisConfig(url=redis_url, reconnect_max_s=0.5),
        storage=StorageConfig(data_dir=data_dir or Path("unused")),
        ingest=IngestConfig(**settings),
    )


def publish(client: redis.Redis, bars: Bars) -> str:
    stream = KEYS.bars(bars.symbol, bars.tf)
    publish_frame(client, stream, bars.to_frame())
    return stream


def xadd(client: redis.Redis, stream: str, **fields: Any) -> bytes:
    return client.xadd(stream, {k: v for k, v in fields.items()})


def bar_fields(ts: int, close: float = 100.0, **overrides: Any) -> dict[str, Any]:
    """A valid bar's fields (wide high-low range); overrides of None drop a field."""
    fields: dict[str, Any] = {
        "ts": ts,
        "open": 100.0,
        "high": 200.0,
        "low": 50.0,
        "close": close,
        "volume": 5.0,
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def stored_bars(bars: Bars) -> list[Bar]:
    return [
        Bar(bars.symbol, bars.tf, int(t), float(o), float(h), float(lo), float(c), float(v))
        for t, o, h, lo, c, v in zip(
            bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, strict=True
        )
    ]


def dlq(client: redis.Redis) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(KEYS.dlq)
    ]


def group_state(client: redis.Redis, stream: str) -> tuple[int | None, int]:
    """(lag, pending) of the daemon's group on ``stream``."""
    for info in client.xinfo_groups(stream):
        if info["name"] in (GROUP, GROUP.encode()):
            return info.get("lag"), int(info["pending"])
    raise AssertionError(f"no group on {stream}")


@contextlib.asynccontextmanager
async def ingest_service(
    config: Config,
    store: BarStore,
    consumer: str | None = None,
    metrics: IngestMetrics | None = None,
) -> AsyncIterator[IngestService]:
    client = aioredis.Redis.from_url(config.redis.url, socket_timeout=5)
    try:
        async with IngestService(
            config, client, store, metrics or IngestMetrics(), consumer
        ) as service:
            yield service
    finally:
        await client.aclose()


async def wait_until(check: Callable[[], bool], within: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


def with_ingest(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, ingest=dataclasses.replace(config.ingest, **changes))
