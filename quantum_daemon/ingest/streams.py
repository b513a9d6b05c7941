"""The bar streams to read, their consumer group, and the consumers in it."""

from __future__ import annotations

import os
import socket
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from quantum_daemon.domain.config import IngestConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.decode import Series
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

SCAN_COUNT = 1000


def consumer_name() -> str:
    """``host-pid``: unique per process, and tells which host runs it."""
    return f"{socket.gethostname()}-{os.getpid()}"


def is_dead_local_consumer(name: str, host: str | None = None) -> bool:
    """Whether ``name`` is a ``host-pid`` consumer of this host whose process
    is gone (its pending entries can be claimed at once, without idle time)."""
    consumer_host, _, pid = name.rpartition("-")
    if consumer_host != (host or socket.gethostname()) or not pid.isdigit():
        return False
    return not _pid_alive(int(pid))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def configured_streams(cfg: IngestConfig, keys: Keys) -> dict[bytes, Series]:
    return {
        keys.bars(symbol, tf).encode(): Series.of(symbol, tf)
        for symbol in cfg.symbols
        for tf in cfg.timeframes
    }


async def discover_streams(redis: aioredis.Redis, keys: Keys) -> dict[bytes, Series]:
    """Every existing stream whose name is a bar stream (the DLQ excluded)."""
    found: dict[bytes, Series] = {}
    async for key in redis.scan_iter(match=keys.bars_pattern, count=SCAN_COUNT, _type="STREAM"):
        name = key if isinstance(key, bytes) else key.encode()
        parsed = keys.parse_bars(name.decode(errors="replace"))
        if parsed is not None:
            found[name] = Series.of(*parsed)
    return found


async def ensure_group(redis: aioredis.Redis, stream: bytes, group: str) -> bool:
    """Create the group (reading from the start; MKSTREAM) unless it exists.
    False when the key is not a stream (it is then left alone)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return True
        if str(exc).startswith("WRONGTYPE"):
            log.error(
                "ingest.stream_invalid", stream=stream.decode(errors="replace"), error=str(exc)
            )
            return False
        raise
    log.info("ingest.group_created", stream=stream.decode(errors="replace"), group=group)
    return True


async def claim_from_dead_local_consumers(
    redis: aioredis.Redis, stream: bytes, group: str, consumer: str, chunk: int
) -> int:
    """Move the pending entries of dead consumers of this host to ``consumer``
    (their ids only: reading our own pending entries then delivers them) and
    delete those consumers. Returns the number of entries claimed."""
    claimed = 0
    for info in await redis.xinfo_consumers(stream, group):
        name = _text(info["name"])
        if name == consumer or not is_dead_local_consumer(name):
            continue
        claimed += await _claim_all_of(redis, stream, group, name, consumer, chunk)
        await redis.xgroup_delconsumer(stream, group, name)
        log.info("ingest.consumer_removed", stream=_text(stream), consumer=name)
    return claimed


async def _claim_all_of(
    redis: aioredis.Redis, stream: bytes, group: str, owner: str, consumer: str, chunk: int
) -> int:
    claimed = 0
    while True:
        pending = await redis.xpending_range(
            stream, group, min="-", max="+", count=chunk, consumername=owner
        )
        if not pending:
            return claimed
        ids: list[Any] = [item["message_id"] for item in pending]
        await redis.xclaim(stream, group, consumer, 0, ids, justid=True)
        claimed += len(ids)


async def group_state(
    redis: aioredis.Redis, stream: bytes, group: str
) -> tuple[int | None, int] | None:
    """(lag, pending) of ``group`` on ``stream`` (lag: entries not yet read,
    None when Redis cannot tell), or None without such a group."""
    for info in await redis.xinfo_groups(stream):
        if _text(info["name"]) == group:
            lag = info.get("lag")
            return (None if lag is None else int(lag)), int(info["pending"])
    return None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
