"""Many jobs through the executor at once: as many running as it has
workers, outcomes in the order they were asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from quantum_daemon.training.executor import Executor, JobOutcome


async def run_all(
    executor: Executor, specs: Sequence[Any], fn: Callable[[Any], Any], timeout_s: float
) -> list[JobOutcome]:
    """Run ``fn(spec)`` for every spec (each has ``family`` and ``job_id``)."""
    outcomes: dict[int, JobOutcome] = {}
    running: dict[asyncio.Task[JobOutcome], int] = {}
    queue = list(enumerate(specs))
    while queue or running:
        while queue and executor.reserve(queue[0][1].family):
            n, spec = queue.pop(0)
            task = asyncio.ensure_future(
                executor.run(fn, spec, family=spec.family, job_id=spec.job_id, timeout_s=timeout_s)
            )
            running[task] = n
        if not running:
            raise RuntimeError("the executor has no worker for these jobs")
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            outcomes[running.pop(task)] = task.result()
    return [outcomes[n] for n in range(len(specs))]
