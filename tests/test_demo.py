"""scripts/demo.py end to end: its own redis-server, the real daemon, the
bundled bars paced onto the streams; it prints the dashboard's address, the
signals the daemon publishes for the live bars, and on Ctrl-C the counts of
the run, and leaves no daemon or Redis behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = r"dashboard:\s+(http://127\.0\.0\.1:\d+/dashboard)"
SIGNAL_ROW = re.compile(r"^(?:signals)?\s+(\w+:\w+)\s+(\d+) \(")


class Output:
    """The demo's stdout, collected by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str) -> re.Match[str] | None:
        return re.search(pattern, self.text, re.MULTILINE)

    def signals_seen(self) -> int:
        """The highest signal count of any series in the live summaries."""
        counts = [int(m.group(2)) for line in self.lines if (m := SIGNAL_ROW.match(line))]
        return max(counts, default=0)

    def join(self) -> None:
        self._thread.join(timeout=10)
        self._stream.close()


def start_demo(data_dir: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    args = ["--tail", "40", "--pace", "0.5", "--every", "1", "--warmup", "0"]
    return subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py"), *args, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )


def wait_until(
    check: Callable[[], object], timeout: float, proc: subprocess.Popen[str], out: Output
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"the demo exited early ({proc.returncode}):\n{out.text}"
        assert time.monotonic() < deadline, f"timed out:\n{out.text[-5000:]}"
        time.sleep(0.2)


def demo_overrides() -> list[str]:
    """Every ``section.key`` that scripts/demo.toml sets."""
    raw = tomllib.loads((REPO / "scripts" / "demo.toml").read_text())
    return [f"{section}.{key}" for section, table in raw.items() for key in table]


def stop(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C first (the demo stops its daemon and Redis), a kill at last."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_demo_publishes_signals_and_sums_up_on_ctrl_c(tmp_path: Path) -> None:
    """The live bars get signals; every demo setting is shown at the top;
    Ctrl-C stops the daemon and Redis and prints the counts."""
    proc = start_demo(tmp_path / "demo")
    out = Output(proc)
    try:
        wait_until(lambda: out.find(DASHBOARD), 30, proc, out)
        dashboard = out.find(DASHBOARD)
        assert dashboard is not None
        wait_until(lambda: out.signals_seen() >= 3, 75, proc, out)
        with urllib.request.urlopen(dashboard.group(1), timeout=5) as page:
            assert page.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, out.text[-5000:]
    finally:
        stop(proc)
        out.join()
    text = out.text
    assert "==> daemon exited with code 0" in text
    assert "==> private redis-server stopped" in text
    published = out.find(r"^  signals published:\s+(\d+)")
    assert published is not None and int(published.group(1)) >= 3, text[-3000:]
    live_bars = out.find(r"summary after \d+ s \((\d+) live bars published per series\)")
    assert live_bars is not None and int(live_bars.group(1)) >= 1
    assert out.find(r"^  trust updates:\s+\d+") and out.find(r"^  versions trained:\s+\d+")
    for key in demo_overrides():
        assert out.find(rf"^  {re.escape(key)} = .+ \(config\.toml: .+\)$"), f"{key} not shown"
    redis_port = out.find(r"==> redis at redis://127\.0\.0\.1:(\d+)")
    assert redis_port is not None and not port_open(int(redis_port.group(1)))
    assert (tmp_path / "demo" / "daemon.log").stat().st_size > 0
