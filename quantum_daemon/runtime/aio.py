"""Small asyncio helpers shared by the daemon's loops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

Waitable = asyncio.Event | Awaitable[Any]


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True early if ``stop`` gets set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def wait_first(*waitables: Waitable, timeout_s: float | None = None) -> None:
    """Wait until the first of ``waitables`` is done (an event: is set), or
    ``timeout_s`` seconds pass; the others are cancelled. Always passes
    through the event loop once, even when an event is already set.

    Pass a future (``asyncio.ensure_future``) rather than a coroutine to read
    its result afterwards: it is done only if it won, and a loser is
    cancelled before it could take anything (a ``Queue.get`` loses no item).
    """
    waiters = [
        asyncio.ensure_future(w.wait() if isinstance(w, asyncio.Event) else w) for w in waitables
    ]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
