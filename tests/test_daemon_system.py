"""The daemon as a real process: it starts, reports ready, stops cleanly on
SIGTERM, survives Redis going away, and never loads model libraries."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from quantum_daemon_dev.redis_server import RedisServer, running_redis
from tests.daemon_proc import DaemonProcess, api_port, write_config


def http_get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_status(url: str, code: int, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        last = http_get(url)
        if last[0] == code:
            return last[1]
        time.sleep(0.1)
    raise AssertionError(f"{url} never returned {code}; last {last}")


@pytest.fixture
def daemon_config(tmp_path: Path, redis_url: str) -> tuple[Path, int]:
    port = api_port()
    return write_config(tmp_path / "config.toml", redis_url, tmp_path / "data", port), port


def test_starts_ready_and_stops_cleanly_on_sigterm(daemon_config: tuple[Path, int]) -> None:
    config, port = daemon_config
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        body = wait_status(f"http://127.0.0.1:{port}/readyz", 200)
        assert body == {"ready": True, "reason": "ok"}
        daemon.send(signal.SIGTERM)
        started = time.monotonic()
        assert daemon.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
        assert daemon.has("daemon.stopped")
    finally:
        daemon.kill()


def test_daemon_process_never_imports_model_libraries(daemon_config: tuple[Path, int]) -> None:
    config, port = daemon_config
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        _, status = http_get(f"http://127.0.0.1:{port}/api/status")
        assert status["heavy_modules_loaded"] == []
    finally:
        daemon.send(signal.SIGTERM)
        daemon.wait()


def test_heartbeat_and_status_command(daemon_config: tuple[Path, int], redis_client: Any) -> None:
    config, _ = daemon_config
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        deadline = time.monotonic() + 5
        while redis_client.get("quantum:daemon:heartbeat") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        heartbeat = json.loads(redis_client.get("quantum:daemon:heartbeat"))
        assert heartbeat["pid"] == daemon.proc.pid  # type: ignore[union-attr]
        assert 0 < redis_client.pttl("quantum:daemon:heartbeat") <= 30_000
        status = DaemonProcess(config, args=("status", "--json")).start()
        assert status.wait() == 0
        assert json.loads(status.raw_lines[-1])["healthy"] is True
    finally:
        daemon.send(signal.SIGTERM)
        daemon.wait()
    after = DaemonProcess(config, args=("status", "--json")).start()
    assert after.wait() == 1
    assert redis_client.get("quantum:daemon:heartbeat") is None


@pytest.mark.timeout(90)
def test_readyz_follows_redis_going_away_and_coming_back(tmp_path: Path) -> None:
    with running_redis() as server:
        port = api_port()
        config = write_config(tmp_path / "c.toml", server.url, tmp_path / "data", port)
        daemon = DaemonProcess(config).start()
        try:
            daemon.wait_for("daemon.ready")
            wait_status(f"http://127.0.0.1:{port}/readyz", 200)
            server.stop()
            body = wait_status(f"http://127.0.0.1:{port}/readyz", 503)
            assert "redis" in body["reason"]
            assert daemon.proc is not None and daemon.proc.poll() is None
            daemon.wait_for("redis.reconnecting")
            server.start()
            wait_status(f"http://127.0.0.1:{port}/readyz", 200, timeout=30)
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            assert "quantum_redis_reconnects_total 1.0" in metrics
        finally:
            daemon.send(signal.SIGTERM)
            assert daemon.wait() == 0


def test_starts_without_redis_and_becomes_ready_when_it_appears(tmp_path: Path) -> None:
    server = RedisServer()
    port = api_port()
    config = write_config(tmp_path / "c.toml", server.url, tmp_path / "data", port)
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready", redis_up=False)
        body = wait_status(f"http://127.0.0.1:{port}/readyz", 503)
        assert body["ready"] is False
        server.start()
        wait_status(f"http://127.0.0.1:{port}/readyz", 200, timeout=30)
    finally:
        daemon.send(signal.SIGTERM)
        assert daemon.wait() == 0
        server.cleanup()


def test_sd_notify_ready_watchdog_and_stopping(
    daemon_config: tuple[Path, int], tmp_path: Path
) -> None:
    config, _ = daemon_config
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": address}).start()
    received: list[str] = []
    try:
        while not any("WATCHDOG=1" in m for m in received):
            received.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in received)
        daemon.send(signal.SIGTERM)
        assert daemon.wait() == 0
        while not any("STOPPING=1" in m for m in received):
            received.append(sock.recv(4096).decode())
    finally:
        daemon.kill()
        sock.close()


def test_second_sigint_forces_exit(daemon_config: tuple[Path, int], tmp_path: Path) -> None:
    config, _ = daemon_config
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        daemon.send(signal.SIGINT)
        daemon.send(signal.SIGINT)
        assert daemon.wait() in (0, 130)
    finally:
        daemon.kill()
