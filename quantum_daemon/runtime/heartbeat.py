"""Liveness for other processes: a heartbeat key with a TTL, and systemd's
watchdog ping. The ping comes from a loop of its own that needs nothing but
the event loop (a blocked event loop stops it), and is sent only while every
loop of the daemon is alive (``runtime.liveness``, checked and logged there):
one dead or stalled loop is enough for systemd to restart the daemon."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from quantum_daemon.domain.config import DaemonConfig
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.liveness import beat
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.redis_link import RedisLink
from quantum_daemon.runtime.sdnotify import Notifier

log = get_logger()


def heartbeat_payload(ready: bool, started_at: float, now: float) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "ts": now,
        "started_at": started_at,
        "ready": ready,
    }


# Deletes the shared heartbeat only while it is still this process's own
# (several daemons on one Redis each write it; the last writer's stays).
DELETE_OWN_LUA = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['pid'] == tonumber(ARGV[1]) and
   cjson.decode(raw)['host'] == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def heartbeat_loop(
    stop: asyncio.Event,
    link: RedisLink,
    key: str,
    cfg: DaemonConfig,
    is_ready: Callable[[], bool],
    own_key: str | None = None,
    describe: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Every ``heartbeat_interval_s``: the shared ``key`` (any daemon alive)
    and this daemon's ``own_key`` (its instance), with a TTL."""
    started_at = time.time()
    ttl_ms = int(cfg.heartbeat_ttl_s * 1000)
    while not stop.is_set():
        body = heartbeat_payload(is_ready(), started_at, time.time())
        payload = json.dumps({**body, **(describe() if describe else {})})
        try:
            await link.client.set(key, payload, px=ttl_ms)
            if own_key is not None:
                await link.client.set(own_key, payload, px=ttl_ms)
        except (RedisError, OSError) as exc:
            log.debug("heartbeat.failed", error=str(exc))
        await sleep_or_stop(stop, cfg.heartbeat_interval_s)
    try:
        await link.client.eval(DELETE_OWN_LUA, 1, key, os.getpid(), socket.gethostname())
        if own_key is not None:
            await link.client.delete(own_key)
    except (RedisError, OSError):
        pass


async def watchdog_loop(
    stop: asyncio.Event, notifier: Notifier, is_alive: Callable[[], bool], interval_s: float
) -> None:
    """Ping systemd's watchdog every ``interval_s`` while ``is_alive()``."""
    while not stop.is_set():
        if is_alive():
            notifier.watchdog()
        await sleep_or_stop(stop, interval_s)


async def loop_lag_monitor(
    stop: asyncio.Event, observe: Callable[[float], None], warn_ms: float, interval_s: float = 0.05
) -> None:
    """Measure how late the loop wakes a sleeper; warn when it stalls."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        beat()
        start = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - start - interval_s)
        observe(lag)
        if lag * 1000 > warn_ms:
            log.warning("loop.stalled", lag_ms=round(lag * 1000, 1))
