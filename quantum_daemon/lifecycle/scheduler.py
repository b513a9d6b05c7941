"""The asyncio loop around the pure scheduler (``core.scheduling``).

``SchedulerLoop`` feeds the ``Scheduler`` bar counts, commands and the clock,
and starts, as tasks, the jobs it hands out; see ``core.scheduling`` for when
each model trains.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from quantum_daemon.core.scheduling import Scheduler, TrainRequest, Trigger
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.runtime.aio import wait_first
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

Launch = Callable[[TrainRequest], Awaitable[bool]]


@dataclass
class SchedulerLoop:
    """Feeds the scheduler and starts its jobs.

    ``launch(request)`` runs one job to its end and returns whether it
    produced a version; it must handle its own errors (an exception from it
    is fatal and ends the loop). ``can_run(key)`` claims a free worker for
    the model, or says there is none. The loop wakes on ``wake()`` (bars stored, a command,
    a job done) or every ``tick_s``.
    """

    scheduler: Scheduler
    can_run: Callable[[ModelKey], bool]
    launch: Launch
    has_active: Callable[[str], bool]
    tick_s: float = 1.0
    drain_s: float = 5.0
    clock: Callable[[], float] = time.time
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def wake(self) -> None:
        self._wakeup.set()

    def bars_stored(self, symbol: str, tf: str, count: int) -> None:
        self.scheduler.bars_stored(symbol, tf, count, self.clock())
        self.wake()

    def request(self, model_id: str, trigger: Trigger = Trigger.OPERATOR) -> None:
        self.scheduler.request(model_id, self.clock(), trigger)
        self.wake()

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            while not stop.is_set():
                self.scheduler.tick(self.clock())
                self._dispatch(tg)
                await self._sleep(stop)
            await self._drain()

    def _dispatch(self, tg: asyncio.TaskGroup) -> None:
        while (request := self.scheduler.next_job(self.clock(), self.can_run)) is not None:
            self._tasks[request.model_id] = tg.create_task(
                self._job(request), name=f"train:{request.model_id}"
            )

    async def _job(self, request: TrainRequest) -> None:
        ok = False
        try:
            ok = await self.launch(request)
        finally:
            self._tasks.pop(request.model_id, None)
            mid = request.model_id
            self.scheduler.job_finished(mid, self.clock(), ok, self.has_active(mid))
            self.wake()

    async def _sleep(self, stop: asyncio.Event) -> None:
        await wait_first(self._wakeup, stop, timeout_s=self.tick_s)
        self._wakeup.clear()

    async def _drain(self) -> None:
        """Shutdown: running jobs get ``drain_s`` to end, then are cancelled."""
        running = list(self._tasks.values())
        if not running:
            return
        log.info("scheduler.draining", running=len(running), drain_s=self.drain_s)
        _, late = await asyncio.wait(running, timeout=self.drain_s)
        for task in late:
            task.cancel("daemon stopping")
