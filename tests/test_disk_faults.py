"""Disk faults on a real daemon: a store that cannot be written makes the
daemon not ready with the path and the reason while nothing is acked, and it
recovers by itself once writing works again; inference worker restarts back
off; a worker that cannot start ends the daemon only when the restart budget
is spent, with the cause in the message.

Tests run as root, for whom ``chmod`` forbids nothing. The faults used here
stop root too: ``chattr +i`` (immutable: writes fail with EPERM) for a
read-only store, and ``RLIMIT_FSIZE`` set on the daemon's pid from outside
(``prlimit``: every write beyond the limit fails with EFBIG, as writes fail
on a full disk; raising it again is the space coming back). Never ``chattr``
the ``-shm`` file: SQLite maps it, and a write to an immutable mapping is a
SIGBUS.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_daemon.runtime.restarts import RestartBudget
from quantum_daemon.storage.bar_store import DB_FILENAME
from tests.conftest import make_bars
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.http_helpers import wait_code
from tests.ingest_helpers import KEYS, group_state, publish
from tests.test_ingest_system import stored_count, wait_for

SYMBOL = "DISKUSDT"
START_MS = 1_704_067_200_000


def chattr_works(probe_dir: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    probe = probe_dir / "chattr-probe"
    probe.write_text("x")
    try:
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
            return False
        try:
            probe.write_text("y")
        except PermissionError:
            return True
        return False
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
        probe.unlink()


def disk_config(tmp_path: Path, redis_url: str, extra: str = "") -> tuple[Path, int]:
    port = api_port()
    ingest = f'[ingest]\nsymbols = ["{SYMBOL}"]\ntimeframes = ["1m"]\nblock_ms = 100\n'
    config = write_config(
        tmp_path / "c.toml", redis_url, tmp_path / "data", port, "stall_s = 20.0\n" + ingest + extra
    )
    # Store retries back off up to reconnect_max_s: keep them short here.
    config.write_text(config.read_text().replace("[redis]\n", "[redis]\nreconnect_max_s = 1.0\n"))
    return config, port


def publish_range(client: redis.Redis, start: int, stop: int) -> None:
    """Bars ``start`` .. ``stop - 1`` of one series, on its 1m grid."""
    bars = make_bars(stop, seed=0, tf="1m", symbol=SYMBOL, start_ms=START_MS)
    publish(client, bars.slice(start, stop))


def pending(client: redis.Redis) -> int:
    state = group_state(client, KEYS.bars(SYMBOL, "1m"))
    return state[1] if state else 0


@pytest.fixture
def immutable_files() -> Iterator[list[Path]]:
    """Files made immutable by a test; made mutable again whatever happens."""
    files: list[Path] = []
    yield files
    for path in files:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


@pytest.mark.timeout(120)
def test_a_read_only_store_is_not_ready_acks_nothing_and_recovers(
    tmp_path: Path, redis_url: str, redis_client: Any, immutable_files: list[Path]
) -> None:
    if not chattr_works(tmp_path):
        pytest.skip("chattr +i does not work here")
    config, port = disk_config(tmp_path, redis_url)
    daemon = DaemonProcess(config).start()
    client = redis.Redis.from_url(redis_url)
    data = tmp_path / "data"
    try:
        daemon.wait_for("daemon.ready")
        publish_range(client, 0, 50)
        wait_for(lambda: stored_count(data) == 50, 20, "the first bars stored")
        for name in (DB_FILENAME, f"{DB_FILENAME}-wal"):
            subprocess.run(["chattr", "+i", str(data / name)], check=True)
            immutable_files.append(data / name)
        publish_range(client, 50, 80)
        body = wait_code(f"http://127.0.0.1:{port}/readyz", 503, timeout=20)
        assert str(data / DB_FILENAME) in body["reason"]
        assert "disk I/O error" in body["reason"] or "readonly" in body["reason"]
        time.sleep(1.0)
        assert pending(client) == 30  # nothing was acknowledged
        for path in immutable_files:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        wait_code(f"http://127.0.0.1:{port}/readyz", 200, timeout=30)
        wait_for(lambda: pending(client) == 0, 20, "the acks")
        assert stored_count(data) == 80
        assert daemon.has("store.write_failed") and daemon.has("store.write_recovered")
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        client.close()
        daemon.kill()


def _started_pids(daemon: DaemonProcess) -> list[int]:
    return [e["pid"] for e in daemon.events if e.get("event") == "inference.worker_started"]


def _wait_new_worker(daemon: DaemonProcess, known: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _started_pids(daemon)
        if len(pids) > known:
            return pids[-1]
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, "".join(daemon.raw_lines[-30:])
        time.sleep(0.05)
    raise AssertionError("no new inference worker:\n" + "".join(daemon.raw_lines[-30:]))


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_a_full_disk_and_a_worker_death_do_not_crash_loop(
    tmp_path: Path, redis_url: str, redis_client: Any
) -> None:
    config, port = disk_config(tmp_path, redis_url)
    daemon = DaemonProcess(config).start()
    client = redis.Redis.from_url(redis_url)
    data = tmp_path / "data"
    try:
        daemon.wait_for("daemon.ready")
        worker = _wait_new_worker(daemon, 0, 30)
        publish_range(client, 0, 20)
        wait_for(lambda: stored_count(data) == 20, 20, "the first bars stored")
        assert daemon.proc is not None
        _, hard = resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (1, hard))  # the disk is full
        publish_range(client, 20, 40)
        body = wait_code(f"http://127.0.0.1:{port}/readyz", 503, timeout=20)
        assert str(data / DB_FILENAME) in body["reason"]
        _kill(worker)
        _wait_new_worker(daemon, 1, 30)  # replaced, on the full disk
        time.sleep(5)
        assert daemon.proc.poll() is None, "".join(daemon.raw_lines[-30:])
        assert len(_started_pids(daemon)) == 2  # no crash loop
        assert pending(client) == 20
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))  # space is back
        wait_code(f"http://127.0.0.1:{port}/readyz", 200, timeout=30)
        wait_for(lambda: pending(client) == 0, 20, "the acks")
        assert stored_count(data) == 40
    finally:
        client.close()
        daemon.kill()


def _timestamps(daemon: DaemonProcess, event: str) -> list[float]:
    return [
        datetime.fromisoformat(e["timestamp"]).timestamp()
        for e in daemon.events
        if e.get("event") == event
    ]


@pytest.mark.timeout(120)
def test_worker_restarts_back_off_and_a_spent_budget_names_the_cause(
    tmp_path: Path, redis_url: str
) -> None:
    config, _ = disk_config(
        tmp_path, redis_url, "[training]\nrestart_budget = 2\nrestart_window_s = 300.0\n"
    )
    daemon = DaemonProcess(config).start()
    data = tmp_path / "data"
    try:
        daemon.wait_for("daemon.ready")
        worker = _wait_new_worker(daemon, 0, 30)
        # The store can no longer be opened by a new process (the daemon keeps its handles).
        (data / DB_FILENAME).rename(data / "moved.sqlite3")
        (data / DB_FILENAME).mkdir()
        _kill(worker)
        assert daemon.wait(timeout=60) == 1
        died = _timestamps(daemon, "inference.worker_died")
        started = _timestamps(daemon, "inference.worker_started")
        assert len(died) == 3 and len(started) == 3  # the first worker, then two restarts
        gaps = [start - death for death, start in zip(died, started[1:], strict=False)]
        assert gaps[0] >= 0.9 and gaps[1] >= 1.8  # 1 s, then 2 s
        crashed = daemon.wait_for("daemon.crashed", timeout=1)
        assert "inference worker died 3 times" in crashed["error"]
        assert "unable to open database file" in crashed["error"]
    finally:
        daemon.kill()


def test_restart_delays_double_within_the_window() -> None:
    budget = RestartBudget(budget=5, window_s=100.0, base_delay_s=1.0, max_delay_s=5.0)
    delays = []
    for now in (0.0, 1.0, 3.0, 7.0):
        assert budget.record(now)
        delays.append(budget.delay())
    assert delays == [1.0, 2.0, 4.0, 5.0]
    assert budget.record(200.0) and budget.delay() == 1.0  # the old failures aged out
