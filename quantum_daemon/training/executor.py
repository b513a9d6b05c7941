"""What a training backend is to the lifecycle, and how a job ends.

``Executor`` is the protocol the lifecycle service drives; the local spawn
pool (``training.pool.ProcessPool``) and Ray (``training.ray_backend``)
implement it. Every job ends in a ``JobOutcome``; a crash loop of the
workers is ``PoolCrashLoop`` (fatal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from quantum_daemon.domain.errors import FatalError

JobStatus = Literal["ok", "error", "crashed", "timeout", "cancelled"]
JobFn = Callable[[Any], Any]


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended. ``reason`` says why it failed; ``detail`` holds the
    worker's traceback for an ``error``."""

    job_id: str
    status: JobStatus
    result: Any = None
    reason: str = ""
    seconds: float = 0.0
    worker: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class PoolCrashLoop(FatalError, RuntimeError):
    """Workers failed more often than the restart budget allows (fatal)."""

    def __init__(self, outcome: JobOutcome, failures: int, window_s: float) -> None:
        super().__init__(
            f"{failures} worker failures within {window_s:.0f}s (last: {outcome.reason})"
        )
        self.outcome = outcome


class Executor(Protocol):
    """What the lifecycle service needs from a training backend."""

    kind: str

    def has_capacity(self, family: str) -> bool: ...

    def reserve(self, family: str) -> bool:
        """Claim a worker for a job about to be run (``run`` consumes the
        claim): the scheduler hands out a job only with a claim in hand."""
        ...

    def release(self, family: str) -> None:
        """Give back a claim whose job will not run."""
        ...

    async def run(
        self, fn: JobFn, spec: Any, *, family: str, job_id: str, timeout_s: float
    ) -> JobOutcome: ...

    def snapshot(self) -> dict[str, Any]: ...

    def busy_seconds(self) -> float: ...

    async def __aenter__(self) -> Executor: ...

    async def __aexit__(self, *exc: object) -> None: ...
