"""Consumers of a Redis consumer group: their names (``host-pid``), and
taking over the pending entries of consumers of this host whose process is
gone (a daemon that crashed left them; its restart has a new pid, so a new
name, and would never read them otherwise)."""

from __future__ import annotations

import os
import socket
from typing import Any

import redis.asyncio as aioredis

from quantum_daemon.runtime.logs import get_logger

log = get_logger()


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
    except OverflowError:
        return False  # not a pid at all
    return True


async def claim_from_dead_local_consumers(
    redis: aioredis.Redis, stream: bytes | str, group: str, consumer: str, chunk: int
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
        log.info("redis.consumer_removed", stream=_text(stream), consumer=name, claimed=claimed)
    return claimed


async def _claim_all_of(
    redis: aioredis.Redis, stream: bytes | str, group: str, owner: str, consumer: str, chunk: int
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


def _text(value: bytes | str) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value
