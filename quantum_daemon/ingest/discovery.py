"""Which bar streams ingest reads: the configured ones, discovered ones, and
groups recreated after Redis lost them.

A discovered name that ``streams.classify_stream`` refuses (not UTF-8, a
symbol that ``domain.ids`` does not allow) is never read; it is logged once
(``ingest.stream_refused``, the name escaped, with the reason) and listed in
the ingest status under ``refused_streams``.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from quantum_daemon.domain.config import IngestConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.decode import Series
from quantum_daemon.ingest.streams import (
    RefusedStream,
    configured_streams,
    discover_streams,
    ensure_group,
    shown_name,
)
from quantum_daemon.runtime.logs import get_logger

log = get_logger()


async def refresh_streams(
    redis: aioredis.Redis,
    cfg: IngestConfig,
    keys: Keys,
    streams: dict[bytes, Series],
    refused: dict[bytes, str] | None = None,
) -> None:
    """Add to ``streams`` the configured streams, plus existing bar streams
    when ``discover``; groups created where missing. Refused names go to
    ``refused`` (name -> reason), each logged the first time it is seen."""
    wanted = configured_streams(cfg, keys)
    if cfg.discover:
        found, rejected = await discover_streams(redis, keys, cfg)
        wanted.update(found)
        _note_refused(rejected, {} if refused is None else refused)
    for stream, series in wanted.items():
        if stream not in streams and await ensure_group(redis, stream, cfg.group):
            streams[stream] = series
            log.info(
                "ingest.stream_added",
                stream=shown_name(stream),
                symbol=series.symbol,
                tf=series.tf,
            )


def _note_refused(rejected: list[RefusedStream], refused: dict[bytes, str]) -> None:
    for item in rejected:
        if item.name not in refused:
            refused[item.name] = item.reason
            log.warning("ingest.stream_refused", stream=shown_name(item.name), reason=item.reason)


async def recreate_groups(redis: aioredis.Redis, group: str, streams: dict[bytes, Series]) -> None:
    """After a stream or its group vanished (deleted, or Redis lost its
    data): create them again; re-reading from the start is harmless. A
    stream whose group cannot be made is dropped from ``streams``."""
    for stream in list(streams):
        if not await ensure_group(redis, stream, group):
            del streams[stream]
