"""Run ``quantum-daemon`` as a real subprocess in tests and read its JSON log lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantum_daemon_dev.redis_server import free_port


def write_config(
    path: Path, redis_url: str, data_dir: Path, api_port: int, extra: str = ""
) -> Path:
    """A minimal daemon config for tests; ``extra`` is appended TOML."""
    path.write_text(
        f'[redis]\nurl = "{redis_url}"\n'
        f'[storage]\ndata_dir = "{data_dir}"\n'
        f"[api]\nport = {api_port}\n"
        f"[daemon]\nheartbeat_interval_s = 0.5\ngrace_s = 5.0\n"
        f"{extra}\n"
    )
    return path


@dataclass
class DaemonProcess:
    """``python -m quantum_daemon --config CONFIG run`` with its stdout parsed."""

    config: Path
    env: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ("run",)
    module: str = "quantum_daemon"  # tests.loop_faults: the daemon with a fault injected
    proc: subprocess.Popen[str] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self) -> DaemonProcess:
        env = {**os.environ, **self.env}
        if "NOTIFY_SOCKET" not in self.env:
            env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--config", str(self.config), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.raw_lines.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass
        except ValueError:  # closed by _close while a child process still held the pipe
            return

    def wait_for(self, event: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in list(self.events):
                if item.get("event") == event and all(item.get(k) == v for k, v in match.items()):
                    return item
            if self.proc is not None and self.proc.poll() is not None and self._reader:
                self._reader.join(timeout=1)
                if not any(e.get("event") == event for e in self.events):
                    raise AssertionError(
                        f"daemon exited ({self.proc.returncode}) before {event}:\n"
                        + "".join(self.raw_lines[-40:])
                    )
            time.sleep(0.05)
        raise AssertionError(f"no {event} within {timeout}s:\n" + "".join(self.raw_lines[-40:]))

    def has(self, event: str) -> bool:
        return any(item.get("event") == event for item in self.events)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._close()
        return code

    def _close(self) -> None:
        if self._reader:
            self._reader.join(timeout=2)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()


def api_port() -> int:
    return free_port()
