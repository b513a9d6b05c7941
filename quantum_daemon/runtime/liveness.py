"""Liveness of the daemon's loops: every loop beats; one that has not beaten
within its bound is stalled, one that ended before the daemon stopped is dead.

The daemon runs each loop in a task whose context holds that loop's
``Pulse`` (``running``). Whatever runs in that context beats it with
``beat()``: the loop's own code once per turn, and the shared wait helpers
(``runtime.aio``) on entry and every ``IDLE_BEAT_S`` while they wait. So a
loop idle on an event, a timer or a ``BLOCK`` read stays alive, while a loop
blocked anywhere else (a future that never resolves, a hung call) for longer
than its bound is stalled. Tasks a loop starts inherit its context: their
beats count for it. Outside the daemon (tests, ``simulate``) no pulse is set
and ``beat()`` does nothing.

A stalled or dead loop turns ``/readyz`` and ``/healthz`` to 503 with its
name and stops the systemd watchdog pings (``runtime.heartbeat``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from quantum_daemon.domain.errors import FatalError
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

# How often a wait helper beats while a loop waits in it (seconds); bounds
# must be well above it.
IDLE_BEAT_S = 0.5

Clock = Callable[[], float]


class LoopDied(FatalError, RuntimeError):
    """A loop of the daemon raised or returned while the daemon was running
    (fatal: crash-only, systemd restarts the process)."""


@dataclass
class Pulse:
    """One loop's last sign of progress."""

    name: str
    bound_s: float
    clock: Clock = time.monotonic
    last_beat: float = field(init=False)
    ended: str | None = None

    def __post_init__(self) -> None:
        self.last_beat = self.clock()

    def beat(self) -> None:
        self.last_beat = self.clock()

    def silent_s(self) -> float:
        return self.clock() - self.last_beat


@dataclass(frozen=True)
class Problem:
    """Why a loop is not alive."""

    loop: str
    state: str  # "stalled" or "dead"
    detail: str

    def __str__(self) -> str:
        return f"loop {self.loop} {self.state}: {self.detail}"


_CURRENT: ContextVar[Pulse | None] = ContextVar("quantum_loop_pulse", default=None)


def beat() -> None:
    """Record progress of the loop this code runs in (no-op outside one)."""
    pulse = _CURRENT.get()
    if pulse is not None:
        pulse.beat()


def in_loop() -> bool:
    """Whether this code runs in a watched loop (its waits must beat)."""
    return _CURRENT.get() is not None


@contextlib.contextmanager
def running(pulse: Pulse) -> Iterator[Pulse]:
    """Run the body (and the tasks it starts) as the loop ``pulse`` watches."""
    token = _CURRENT.set(pulse)
    try:
        yield pulse
    finally:
        _CURRENT.reset(token)


class Liveness:
    """The pulses of the daemon's loops, and what is wrong with them."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.pulses: dict[str, Pulse] = {}
        self._stalled: set[str] = set()

    def watch(self, name: str, bound_s: float) -> Pulse:
        pulse = Pulse(name, bound_s, self.clock)
        self.pulses[name] = pulse
        return pulse

    def ended(self, name: str, why: str) -> None:
        self.pulses[name].ended = why

    def problems(self) -> list[Problem]:
        """Dead loops first, then stalled ones; empty when all are alive."""
        dead = [Problem(p.name, "dead", p.ended) for p in self.pulses.values() if p.ended]
        stalled = [
            Problem(
                p.name, "stalled", f"no progress for {p.silent_s():.1f}s (bound {p.bound_s:g}s)"
            )
            for p in self.pulses.values()
            if not p.ended and p.silent_s() > p.bound_s
        ]
        return dead + stalled

    def check(self) -> list[Problem]:
        """``problems()``, logging each loop that stalled or recovered since
        the last check."""
        problems = self.problems()
        stalled = {p.loop for p in problems if p.state == "stalled"}
        for name in sorted(stalled - self._stalled):
            pulse = self.pulses[name]
            log.error(
                "liveness.stalled",
                loop=name,
                silent_s=round(pulse.silent_s(), 3),
                bound_s=pulse.bound_s,
            )
        for name in sorted(self._stalled - stalled):
            if not self.pulses[name].ended:
                log.info("liveness.recovered", loop=name)
        self._stalled = stalled
        return problems

    def snapshot(self) -> dict[str, Any]:
        """Per loop: seconds since its last beat, its bound, its state (for status)."""
        now_problems = {p.loop: p.state for p in self.problems()}
        return {
            name: {
                "silent_s": round(pulse.silent_s(), 3),
                "bound_s": pulse.bound_s,
                "state": now_problems.get(name, "alive"),
                **({"ended": pulse.ended} if pulse.ended else {}),
            }
            for name, pulse in self.pulses.items()
        }
