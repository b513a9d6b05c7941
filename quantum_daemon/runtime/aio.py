"""Small asyncio helpers shared by the daemon's loops.

They are also where a loop is idle: inside a watched loop
(``runtime.liveness``) they beat on entry, every ``IDLE_BEAT_S`` while they
wait, and on the way out, so waiting for work or for time never looks like a
stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

from quantum_daemon.runtime.liveness import IDLE_BEAT_S, beat, in_loop

Waitable = asyncio.Event | Awaitable[Any]
T = TypeVar("T")


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; return True early if ``stop`` gets set."""
    await wait_first(stop, timeout_s=seconds)
    return stop.is_set()


async def next_until_stopped(queue: asyncio.Queue[T], stop: asyncio.Event) -> T | None:
    """The next item of ``queue``, waiting for one until ``stop`` is set; once
    stopped, what is still queued, then None. Beats on every item: a loop kept
    busy by a queue that is never empty is making progress, not stalled."""
    beat()
    raise_if_cancel_was_lost()  # draining after stop never awaits: check here
    if queue.empty() and not stop.is_set():
        getter = asyncio.ensure_future(queue.get())
        await wait_first(getter, stop)
        if getter.done():
            return getter.result()
    return None if queue.empty() else queue.get_nowait()


def raise_if_cancel_was_lost() -> None:
    """Raise ``CancelledError`` in a task whose cancellation was requested but
    swallowed on the way (Python 3.11's ``wait_for`` returns the result of an
    inner call that finished as the cancel came, and redis-py sends every
    command under ``wait_for``): each wait is then where the cancel lands."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def wait_first(*waitables: Waitable, timeout_s: float | None = None) -> None:
    """Wait until the first of ``waitables`` is done (an event: is set), or
    ``timeout_s`` seconds pass; the others are cancelled. Always passes
    through the event loop once, even when an event is already set.

    Pass a future (``asyncio.ensure_future``) rather than a coroutine to read
    its result afterwards: it is done only if it won, and a loser is
    cancelled before it could take anything (a ``Queue.get`` loses no item).
    """
    raise_if_cancel_was_lost()
    waiters = [
        asyncio.ensure_future(w.wait() if isinstance(w, asyncio.Event) else w) for w in waitables
    ]
    try:
        await _wait_beating(waiters, timeout_s)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _wait_beating(waiters: Sequence[asyncio.Future[Any]], timeout_s: float | None) -> None:
    if not in_loop():
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        return
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while True:
        beat()
        left = None if deadline is None else max(0.0, deadline - loop.time())
        step = IDLE_BEAT_S if left is None else min(IDLE_BEAT_S, left)
        done, _ = await asyncio.wait(waiters, timeout=step, return_when=asyncio.FIRST_COMPLETED)
        if done or (deadline is not None and loop.time() >= deadline):
            beat()
            return
