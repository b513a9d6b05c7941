"""The feed's clock: the wall clock in service, a clock the tests move."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from quantum_daemon.runtime.aio import sleep_or_stop

# The wall clock is read again at least this often while waiting: NTP may step it.
RECHECK_S = 30.0


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def sleep_until(self, stop: asyncio.Event, at_ms: int) -> None:
        """Return once the clock reads ``at_ms`` or later, or ``stop`` is set."""
        ...


class WallClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def sleep_until(self, stop: asyncio.Event, at_ms: int) -> None:
        while not stop.is_set():
            left_s = (at_ms - self.now_ms()) / 1000
            if left_s <= 0:
                return
            await sleep_or_stop(stop, min(left_s, RECHECK_S))
