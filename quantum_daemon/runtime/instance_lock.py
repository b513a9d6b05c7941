"""One daemon per data dir: an exclusive ``flock`` on ``daemon.lock`` in it.

The kernel releases the lock when the process ends, however it ends
(SIGKILL included), so a stale lock file never blocks a restart. The file
holds the pid of the holder, for the message a second daemon exits with.
The descriptor is not inheritable: worker processes never hold the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from quantum_daemon.domain.errors import EX_TEMPFAIL, FatalError

LOCK_FILENAME = "daemon.lock"


class InstanceLocked(FatalError):
    """Another daemon holds the data dir (exit code 75, EX_TEMPFAIL)."""

    exit_code = EX_TEMPFAIL


class InstanceLock:
    """``with InstanceLock(data_dir):`` holds the data dir or raises ``InstanceLocked``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise InstanceLocked(
                f"data dir {self.data_dir} is in use by another quantum-daemon "
                f"(pid {self.holder() or 'unknown'}; lock {self.path}); "
                "stop it first, or give this one another [storage] data_dir"
            ) from None
        self._fd = fd
        self._write_pid(fd)

    def _write_pid(self, fd: int) -> None:
        # Only the holder writes; a full disk must not stop the daemon here.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def holder(self) -> int | None:
        """The pid written by the daemon holding the lock, if readable."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
