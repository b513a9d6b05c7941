"""One daemon per data dir: a second one exits at once (code 75) naming the
dir and the holder's pid; the kernel drops the lock with its holder, SIGKILL
included, so a restart never finds a stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_daemon.domain.errors import EX_TEMPFAIL
from quantum_daemon.runtime.instance_lock import InstanceLock, InstanceLocked
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.http_helpers import wait_code


def _config(tmp_path: Path, redis_url: str, name: str) -> tuple[Path, int]:
    port = api_port()
    return write_config(tmp_path / f"{name}.toml", redis_url, tmp_path / "data", port), port


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    with InstanceLock(tmp_path):
        holder = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path\n"
                "from quantum_daemon.runtime.instance_lock import InstanceLock, InstanceLocked\n"
                "try:\n    InstanceLock(Path(sys.argv[1])).acquire()\n"
                "except InstanceLocked as exc:\n    print(exc); sys.exit(exc.exit_code)\n",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
        )
        assert holder.returncode == EX_TEMPFAIL
        assert str(tmp_path) in holder.stdout and f"pid {os.getpid()}" in holder.stdout
    with InstanceLock(tmp_path):  # released: taken again
        pass
    with pytest.raises(InstanceLocked), InstanceLock(tmp_path), InstanceLock(tmp_path):
        pass  # a second descriptor in the same process is refused too


@pytest.mark.timeout(90)
def test_a_second_daemon_on_the_same_data_dir_exits_at_once(tmp_path: Path, redis_url: str) -> None:
    first_config, first_port = _config(tmp_path, redis_url, "first")
    second_config, _ = _config(tmp_path, redis_url, "second")
    first = DaemonProcess(first_config).start()
    second = DaemonProcess(second_config)
    try:
        first.wait_for("daemon.ready")
        second.start()
        assert second.wait(timeout=20) == EX_TEMPFAIL
        output = "".join(second.raw_lines)
        assert str(tmp_path / "data") in output
        assert first.proc is not None and f"pid {first.proc.pid}" in output
        assert not second.has("daemon.ready")
        wait_code(f"http://127.0.0.1:{first_port}/readyz", 200)  # the first runs on
    finally:
        second.kill()
        first.kill()


@pytest.mark.timeout(90)
def test_the_lock_dies_with_its_holder(tmp_path: Path, redis_url: str) -> None:
    first_config, _ = _config(tmp_path, redis_url, "first")
    second_config, second_port = _config(tmp_path, redis_url, "second")
    first = DaemonProcess(first_config).start()
    second = DaemonProcess(second_config)
    try:
        first.wait_for("daemon.ready")
        first.send(signal.SIGKILL)  # no cleanup runs; its orphaned workers wind down later
        assert first.proc is not None and first.proc.wait(timeout=10) == -signal.SIGKILL
        second.start()
        second.wait_for("daemon.ready", timeout=30)
        wait_code(f"http://127.0.0.1:{second_port}/readyz", 200)
    finally:
        second.kill()
        first.kill()
