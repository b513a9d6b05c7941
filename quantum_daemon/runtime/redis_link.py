"""The daemon's Redis connection and its health.

One ``redis.asyncio`` client (hiredis parser) shared by the daemon's loops.
``watch()`` pings Redis periodically: when Redis goes away it logs
``redis.reconnecting`` with a jittered backoff and keeps the daemon up; when
Redis answers again it counts a reconnect. ``up`` feeds ``/readyz``.
A permission the Redis user lacks is not waited out: the first refusal
(``redis_acl``) makes the link down for good and ``watch()`` raises it, which
ends the daemon with exit code 78.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from quantum_daemon.domain.config import RedisConfig
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.redis_acl import RedisPermissionDenied, watch_denials
from quantum_daemon.runtime.telemetry import DaemonMetrics

log = get_logger()

PING_INTERVAL_S = 1.0


def make_client(cfg: RedisConfig, decode_responses: bool = False) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        cfg.url,
        **cfg.client_options(),
        socket_connect_timeout=cfg.connect_timeout_s,
        socket_timeout=cfg.connect_timeout_s + 5.0,
        decode_responses=decode_responses,
        health_check_interval=15,
    )


class RedisLink:
    """Owns the client; knows whether Redis answers."""

    def __init__(self, cfg: RedisConfig, metrics: DaemonMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.client = make_client(cfg)
        self.up = False
        self.last_error = "not checked yet"
        self.denied: str | None = None
        watch_denials(self.client, self._denied)
        self._changed = asyncio.Event()

    async def __aenter__(self) -> RedisLink:
        await self.check()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.aclose()

    async def check(self) -> bool:
        """One PING; updates ``up``. Never raises for Redis errors."""
        if self.denied is not None:
            self._mark(False, self.denied)
            return False
        try:
            await asyncio.wait_for(self.client.ping(), timeout=self.cfg.connect_timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(False, f"{type(exc).__name__}: {exc}")
            return False
        self._mark(True, "")
        return True

    def _denied(self, message: str) -> None:
        if self.denied is None:
            self.denied = message
            log.error("redis.permission_denied", error=message)
        self._mark(False, message)

    def _mark(self, up: bool, error: str) -> None:
        if up and not self.up and self.last_error != "not checked yet":
            self.metrics.redis_reconnects.inc()
            log.info("redis.reconnected")
        self.up = up
        self.last_error = error
        self.metrics.redis_up.set(1 if up else 0)

    async def wait_up(self, stop: asyncio.Event) -> bool:
        """Wait until Redis answers (True) or stop is set (False)."""
        backoff = Backoff(cap=self.cfg.reconnect_max_s)
        while not stop.is_set():
            self._raise_denial()
            if await self.check():
                return True
            delay = backoff.next_delay()
            log.warning("redis.reconnecting", error=self.last_error, retry_in_s=round(delay, 3))
            await sleep_or_stop(stop, delay)
        return False

    async def watch(self, stop: asyncio.Event) -> None:
        """Loop: ping every second; on failure back off until Redis returns.
        Raises ``RedisPermissionDenied`` once a command was refused."""
        while not stop.is_set():
            self._raise_denial()
            if not await self.check():
                await self.wait_up(stop)
            await sleep_or_stop(stop, PING_INTERVAL_S)

    def _raise_denial(self) -> None:
        if self.denied is not None:
            raise RedisPermissionDenied(self.denied)
