"""The daemon's end of the inference worker: spawn, talk, supervise.

The worker is one ``spawn`` process with a duplex pipe. Requests are written
to the pipe from the event loop (a few hundred bytes: the write never
waits); answers are read by a callback that the loop runs when the pipe
becomes readable (``loop.add_reader``), so no thread sits between the worker
and the loop. End of file on the pipe is the worker's death: every request
in flight fails with ``WorkerDied``, and ``supervise`` starts a new worker
after a delay that doubles with each recent death (``RestartBudget.delay``:
1 s, 2 s, 4 s, ...); more than ``budget`` deaths within ``window_s`` is a
crash loop, raised as ``InferenceCrashLoop``: fatal, its message names the
last cause. A worker that cannot start says why (``StartFailed``) before it
exits. Between a death and the new worker's first report, ``trouble`` says
what happened (the daemon is not ready meanwhile). A request without an
answer after its time limit kills the worker (it is then replaced the same
way).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

from quantum_daemon.domain.errors import FatalError
from quantum_daemon.inference.messages import (
    BatchAnswer,
    InferenceWorkerSettings,
    LoadReport,
    PredictAnswer,
    PredictBatch,
    PredictRequest,
    RequestFailed,
    StartFailed,
)
from quantum_daemon.inference.worker import worker_main
from quantum_daemon.runtime.aio import sleep_or_stop, wait_first
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.restarts import RestartBudget

log = get_logger()


Answer = PredictAnswer | RequestFailed | BatchAnswer


class WorkerDied(Exception):
    """The worker ended (or was killed) before it answered."""


class InferenceCrashLoop(FatalError, RuntimeError):
    """The inference worker died more often than its restart budget allows (fatal)."""


class WorkerLink:
    """One supervised inference worker; see the module docstring."""

    def __init__(
        self,
        settings: InferenceWorkerSettings,
        on_report: Callable[[LoadReport], None],
        budget: RestartBudget,
        on_state: Callable[[bool], None] = lambda up: None,
        on_restart: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.on_report = on_report
        self.on_state = on_state
        self.on_restart = on_restart
        self.budget = budget
        self.clock = clock
        self.ctx = multiprocessing.get_context("spawn")
        self.proc: SpawnProcess | None = None
        self.conn: Connection | None = None
        self.ready = asyncio.Event()  # the current worker has reported its models
        self.died = asyncio.Event()
        self.restarts = 0
        self.closing = False
        self.trouble: str | None = None  # set from a death until the next worker reports
        self.start_error: str | None = None  # what the current worker said before it exited
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._next_id = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- start and stop ------------------------------------------------------
    async def start(self) -> None:
        proc, conn = await asyncio.to_thread(self._spawn)
        self.proc, self.conn = proc, conn
        self.start_error = None
        self.died.clear()
        watch_pipe(conn, self._readable)
        log.info("inference.worker_started", pid=proc.pid)

    def _spawn(self) -> tuple[SpawnProcess, Connection]:
        conn, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(
            target=worker_main, args=(child, self.settings), name="inference", daemon=True
        )
        proc.start()
        child.close()  # only the child holds its end now: its death is EOF here
        return proc, conn

    async def close(self, grace_s: float) -> None:
        """Ask the worker to stop, wait up to ``grace_s``, then kill it."""
        self.closing = True
        if self.conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
        await asyncio.to_thread(self._join, grace_s)
        self._lost("daemon stopping")

    def _join(self, grace_s: float) -> None:
        if self.proc is None:
            return
        self.proc.join(timeout=grace_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=10)

    def kill(self) -> None:
        """Kill the worker now (a hung request); ``supervise`` replaces it."""
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()

    # -- the pipe ------------------------------------------------------------
    async def ask_batch(
        self, requests: tuple[PredictRequest, ...], timeout_s: float
    ) -> tuple[PredictAnswer | RequestFailed, ...]:
        """Send ``requests`` as one ``PredictBatch``; their answers, in order.
        ``timeout_s`` is for the whole batch. Raises ``WorkerDied``."""
        answer = await self._ask(PredictBatch(self.next_id(), requests), timeout_s)
        if not isinstance(answer, BatchAnswer) or len(answer.answers) != len(requests):
            raise TypeError(f"not the answer to a batch of {len(requests)}: {answer!r}")
        return answer.answers

    async def _ask(self, request: PredictRequest | PredictBatch, timeout_s: float) -> Answer:
        if self.conn is None or self.died.is_set():
            raise WorkerDied("no worker")
        future = asyncio.get_running_loop().create_future()
        self._pending[request.request_id] = future
        try:
            self.conn.send(request)
        except (OSError, ValueError) as exc:  # the worker is gone; its EOF may not be read yet
            self._pending.pop(request.request_id, None)
            self._lost(f"cannot write to the worker: {exc}")
            raise WorkerDied(f"cannot write to the worker: {exc}") from None
        try:
            # A wait helper (the loop beats while the worker thinks); the
            # shield keeps its cancelling of the loser off the answer itself.
            await wait_first(asyncio.shield(future), timeout_s=timeout_s)
            if not future.done():
                log.error("inference.worker_hung", pid=self.pid, timeout_s=timeout_s)
                self.kill()
                self._lost(f"no answer within {timeout_s:g}s")
                raise WorkerDied(f"no answer within {timeout_s:g}s")
            return future.result()
        finally:
            self._pending.pop(request.request_id, None)

    def _readable(self) -> None:
        """The loop's reader callback: take every complete message there is."""
        assert self.conn is not None
        try:
            while self.conn.poll():
                self._dispatch(self.conn.recv())
        except (EOFError, OSError):
            self._lost("end of pipe")
        except Exception as exc:  # an unreadable message: treat the worker as broken
            log.error("inference.bad_message", error=repr(exc))
            self.kill()
            self._lost(f"bad message: {exc!r}")

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, StartFailed):
            self.start_error = message.error
            return
        if isinstance(message, LoadReport):
            self.trouble = None
            self.ready.set()
            self.on_state(True)
            self.on_report(message)
            return
        future = self._pending.get(getattr(message, "request_id", -1))
        if future is not None and not future.done():
            future.set_result(message)

    def _lost(self, why: str) -> None:
        if self.conn is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.conn.fileno())
            self.conn.close()
            self.conn = None
        self.ready.clear()
        self.on_state(False)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerDied(why))
        self.died.set()

    # -- supervision ---------------------------------------------------------
    async def supervise(self, stop: asyncio.Event) -> None:
        """Replace the worker whenever it dies, within the restart budget."""
        while not stop.is_set():
            await wait_first(self.died, stop)
            if not self.died.is_set() or self.closing:
                return
            reason = await asyncio.to_thread(self.death_reason)
            if not self.budget.record(self.clock()):
                log.error("inference.worker_died", pid=self.pid, reason=reason)
                raise InferenceCrashLoop(
                    f"inference worker died {len(self.budget.times)} times within "
                    f"{self.budget.window_s:.0f}s (last: {reason})"
                )
            delay = self.budget.delay()
            log.warning("inference.worker_died", pid=self.pid, reason=reason, restart_in_s=delay)
            self.trouble = f"{reason}; restarting in {delay:g}s"
            if await sleep_or_stop(stop, delay):
                return
            self.restarts += 1
            self.on_restart()
            await self.start()

    def death_reason(self) -> str:
        if self.proc is None:
            return "never started"
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code is None:
            self.proc.kill()
            self.proc.join(timeout=5)
            return "worker stopped answering"
        if code < 0:
            return f"worker killed by {signal.Signals(-code).name}"
        if self.start_error:
            return f"worker exited with code {code}: {self.start_error}"
        return f"worker exited with code {code}"


def watch_pipe(conn: Connection, callback: Callable[[], None]) -> None:
    """Run ``callback`` on the loop whenever ``conn`` is readable, with the
    pipe left blocking: uvloop's ``add_reader`` makes the fd non-blocking,
    and ``Connection.recv`` of an answer that has not fully arrived (large
    catch-up answers, under load) then raised ``BlockingIOError``, which read
    as the worker's death (the soak saw six in seven minutes)."""
    asyncio.get_running_loop().add_reader(conn.fileno(), callback)
    os.set_blocking(conn.fileno(), True)
