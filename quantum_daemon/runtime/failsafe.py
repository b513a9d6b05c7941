"""The last resort of crash-only: once the daemon decided to die, it dies.

A loop that raised ends the daemon, but its way out (cancelling the other
loops, closing the services) may itself hang on something that swallows a
cancellation or waits forever; the process would then sit half-dead. Armed at
the first fatal failure, a timer thread (it runs even when the event loop is
blocked) ends the process with ``os._exit`` if it is still there after the
grace period.
"""

from __future__ import annotations

import os
import sys
import threading

from quantum_daemon.runtime.logs import get_logger

log = get_logger()


class FailsafeExit:
    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, after_s: float, code: int, reason: str) -> None:
        """End the process with ``code`` in ``after_s`` seconds (first call wins)."""
        if self._timer is not None:
            return
        self._timer = threading.Timer(after_s, self._exit, args=(after_s, code, reason))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    @staticmethod
    def _exit(after_s: float, code: int, reason: str) -> None:
        log.error("daemon.forced_exit", reason=reason, after_s=after_s, exit_code=code)
        sys.stdout.flush()
        os._exit(code)
