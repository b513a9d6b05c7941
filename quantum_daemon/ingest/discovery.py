"""Which bar streams ingest reads: the configured ones, discovered ones, and
groups recreated after Redis lost them."""

from __future__ import annotations

import redis.asyncio as aioredis

from quantum_daemon.domain.config import IngestConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.decode import Series
from quantum_daemon.ingest.streams import configured_streams, discover_streams, ensure_group
from quantum_daemon.runtime.logs import get_logger

log = get_logger()


async def refresh_streams(
    redis: aioredis.Redis, cfg: IngestConfig, keys: Keys, streams: dict[bytes, Series]
) -> None:
    """Add to ``streams`` the configured streams, plus existing bar streams
    when ``discover``; groups created where missing."""
    wanted = configured_streams(cfg, keys)
    if cfg.discover:
        wanted.update(await discover_streams(redis, keys))
    for stream, series in wanted.items():
        if stream not in streams and await ensure_group(redis, stream, cfg.group):
            streams[stream] = series
            log.info(
                "ingest.stream_added",
                stream=stream.decode(),
                symbol=series.symbol,
                tf=series.tf,
            )


async def recreate_groups(redis: aioredis.Redis, group: str, streams: dict[bytes, Series]) -> None:
    """After a stream or its group vanished (deleted, or Redis lost its
    data): create them again; re-reading from the start is harmless. A
    stream whose group cannot be made is dropped from ``streams``."""
    for stream in list(streams):
        if not await ensure_group(redis, stream, group):
            del streams[stream]
