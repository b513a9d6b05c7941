"""Test only: ``python -m tests.loop_faults --config C run`` runs the daemon
with a fault in its control loop, struck once the file named by
``QUANTUM_TEST_FAULT_TRIGGER`` exists. ``QUANTUM_TEST_FAULT`` says which:

- ``raise``: the loop raises,
- ``return``: the loop returns as if it were done,
- ``stall``: the loop awaits a future that never resolves (a real stall of
  that one task while the rest of the daemon runs on).

Nothing in the package reads these variables; only this module does.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from quantum_daemon.cli import main
from quantum_daemon.lifecycle.control import ControlConsumer


class _Return(Exception):
    """Unwinds the control loop to its patched ``run``, which returns."""


def install(kind: str, trigger: str) -> None:
    read_once = ControlConsumer.read_once
    run = ControlConsumer.run

    async def faulty_read_once(self: ControlConsumer, cursor: str, block_ms: Any) -> int:
        if os.path.exists(trigger):  # noqa: ASYNC240 (a test hook: one stat per read)
            if kind == "raise":
                raise RuntimeError("injected fault: the control loop raises")
            if kind == "return":
                raise _Return
            if kind == "stall":
                await asyncio.get_running_loop().create_future()
        return await read_once(self, cursor, block_ms)

    async def returning_run(self: ControlConsumer, stop: asyncio.Event) -> None:
        try:
            await run(self, stop)
        except _Return:
            return

    ControlConsumer.read_once = faulty_read_once  # type: ignore[method-assign]
    ControlConsumer.run = returning_run  # type: ignore[method-assign]


if __name__ == "__main__":
    install(os.environ["QUANTUM_TEST_FAULT"], os.environ["QUANTUM_TEST_FAULT_TRIGGER"])
    sys.exit(main())
