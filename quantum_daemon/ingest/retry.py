"""What ingest does when Redis fails: log, back off, retry.

A transient error (connection lost, timeout) is waited out with capped
exponential backoff. A ``NOGROUP`` error means the stream or its group is
gone (deleted, or Redis lost its data): the groups are created again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError, ResponseError

from quantum_daemon.ingest.metrics import IngestMetrics
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

T = TypeVar("T")
TRANSIENT_REDIS = (RedisError, OSError)


class RedisRetry:
    """``recreate_groups`` is called on ``NOGROUP``."""

    def __init__(
        self,
        metrics: IngestMetrics,
        reconnect_max_s: float,
        recreate_groups: Callable[[], Awaitable[None]],
    ) -> None:
        self.metrics = metrics
        self.reconnect_max_s = reconnect_max_s
        self.recreate_groups = recreate_groups

    def backoff(self) -> Backoff:
        return Backoff(cap=self.reconnect_max_s)

    async def until_done(self, action: Callable[[], Awaitable[T]]) -> T:
        """Run ``action`` until it gets through Redis."""
        backoff = self.backoff()
        while True:
            try:
                return await action()
            except TRANSIENT_REDIS as exc:
                await self.trouble(exc, backoff, None)

    async def trouble(
        self, exc: BaseException, backoff: Backoff, stop: asyncio.Event | None
    ) -> None:
        """Log and wait before retrying; a group lost with Redis' data is recreated."""
        self.metrics.redis_errors.inc()
        if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
            log.warning("ingest.group_missing", error=str(exc))
            with contextlib.suppress(*TRANSIENT_REDIS):
                await self.recreate_groups()
                return
        delay = backoff.next_delay()
        log.warning(
            "redis.reconnecting", error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 3)
        )
        if stop is None:
            await asyncio.sleep(delay)
        else:
            await sleep_or_stop(stop, delay)
