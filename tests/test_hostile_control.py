"""Hostile entries on ``quantum:control`` and hostile ids at the API and the
CLI, against a real daemon process and a real redis-server: every entry is
answered (``control.rejected`` with a reason) and acknowledged, the daemon
stays up and keeps answering, a crash never strands a command, nothing
unvalidated reaches a path, and no answer shows the data dir."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_daemon.cli import main as cli_main
from quantum_daemon.core.promotion import judge
from quantum_daemon.domain.config import PromotionConfig
from quantum_daemon.domain.errors import EX_FAILURE, EX_USAGE
from quantum_daemon.domain.keys import Keys
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.registry import Registry
from tests.daemon_proc import DaemonProcess, api_port, write_config

KEYS = Keys()
GROUP = "quantum-daemon"
XGB = "xgb_BTCUSDT_1h"
VERSION = "v20240101_000000"

# (what, fields) of entries that must each be rejected with a reason.
HOSTILE: list[tuple[str, dict[bytes, bytes]]] = [
    ("command not UTF-8", {b"command": b"\xff\xfe", b"model_id": XGB.encode()}),
    ("model id not UTF-8", {b"command": b"train", b"model_id": b"xgb_\xffBTC_1h"}),
    ("field name not UTF-8", {b"\xc3\x28": b"x", b"command": b"train", b"model_id": XGB.encode()}),
    (
        "version not UTF-8",
        {b"command": b"promote", b"model_id": XGB.encode(), b"version": b"v2024\xff101_000000"},
    ),
    ("reason not UTF-8", {b"command": b"train", b"model_id": XGB.encode(), b"reason": b"\xc0op"}),
    (
        "NUL in model id",
        {b"command": b"promote", b"model_id": b"xgb_BTC\x00USDT_1h", b"version": VERSION.encode()},
    ),
    (
        "300-character model id",
        {
            b"command": b"promote",
            b"model_id": b"xgb_" + b"A" * 293 + b"_1h",
            b"version": VERSION.encode(),
        },
    ),
    ("path in model id", {b"command": b"rollback", b"model_id": b"xgb_../../etc_1h"}),
    ("path in version", {b"command": b"retire", b"model_id": XGB.encode(), b"version": b"../x"}),
    (
        "unknown model",
        {b"command": b"promote", b"model_id": b"xgb_DOGEUSDT_1h", b"version": VERSION.encode()},
    ),
    ("oversized", {b"command": b"train", b"model_id": XGB.encode(), b"reason": b"x" * 100_000}),
    ("no fields that matter", {b"x": b"y"}),
]
# The entries above with a byte that is not UTF-8, and what their answer names.
NOT_UTF8 = {
    "command not UTF-8": "field 'command'",
    "model id not UTF-8": "field 'model_id'",
    "version not UTF-8": "field 'version'",
    "reason not UTF-8": "field 'reason'",
    "field name not UTF-8": "a field name",
}


def answers(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """control.* answers on quantum:events by command id: {type, error, ...}."""
    found = {}
    for _, fields in client.xrange(KEYS.events):
        kind = fields[b"type"].decode()
        if kind.startswith("control."):
            data = json.loads(fields[b"data"])
            found[data["command_id"]] = {"type": kind, **data}
    return found


def wait_answered(
    client: redis.Redis, ids: list[str], daemon: DaemonProcess, timeout: float = 30.0
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = answers(client)
        if all(i in got for i in ids):
            return got
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited {daemon.proc.returncode}:\n" + "".join(daemon.raw_lines[-30:])
            )
        time.sleep(0.1)
    missing = [i for i in ids if i not in answers(client)]
    raise AssertionError(f"unanswered {missing}:\n" + "".join(daemon.raw_lines[-30:]))


def no_pending(client: redis.Redis, timeout: float = 5.0) -> bool:
    """Whether the control group's pending list empties (an answer is
    published just before its entry is acknowledged)."""
    deadline = time.monotonic() + timeout
    while client.xpending(KEYS.control, GROUP)["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return client.xpending(KEYS.control, GROUP)["pending"] == 0


def stop(daemon: DaemonProcess) -> None:
    """SIGTERM (its workers exit with it), SIGKILL only if it hangs."""
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.send(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def model_folders(data_dir: Path) -> list[str]:
    models = data_dir / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


def altered_version(data_dir: Path, model_id: str) -> str:
    """A rejected version of ``model_id`` (its trades fail a gate, so no
    worker loads it) whose artifact was changed after it was written."""
    family, symbol, tf = model_id.rsplit("_", 2)
    metrics = {"trades": 1, "dsr": 0.7, "profit_factor": 1.3, "sharpe": 1.0}

    def files(folder: Path) -> list[Path]:
        (folder / "w.bin").write_text("weights")
        return [folder / "w.bin"]

    at = datetime(2024, 8, 1, tzinfo=UTC)
    meta = {"family": family, "symbol": symbol, "tf": tf, "metrics": metrics}
    version = artifacts.write_version(data_dir, model_id, files, meta, at).version
    registry = Registry(data_dir)
    registry.register(model_id, version)
    registry.apply_verdict(model_id, version, judge(metrics, None, None, PromotionConfig()))
    assert registry.stage(model_id, version) == "rejected"
    (artifacts.model_dir(data_dir, model_id) / version / "w.bin").write_text("altered")
    return version


@pytest.fixture
def daemon_setup(tmp_path: Path, redis_url: str) -> tuple[Path, Path, int]:
    data_dir, port = tmp_path / "data", api_port()
    return write_config(tmp_path / "config.toml", redis_url, data_dir, port), data_dir, port


@pytest.mark.timeout(120)
def test_every_hostile_control_entry_is_answered_and_the_daemon_keeps_answering(
    daemon_setup: tuple[Path, Path, int], redis_url: str
) -> None:
    config, data_dir, port = daemon_setup
    client = redis.Redis.from_url(redis_url)
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        sent = [client.xadd(KEYS.control, fields).decode() for _, fields in HOSTILE]  # type: ignore[arg-type]
        valid = client.xadd(KEYS.control, {"command": "train", "model_id": XGB}).decode()
        got = wait_answered(client, [*sent, valid], daemon)
        answer = {what: got[entry_id] for (what, _), entry_id in zip(HOSTILE, sent, strict=True)}
        for what, reply in answer.items():
            assert reply["type"] == "control.rejected", what
            assert reply["error"], what
            assert str(data_dir) not in reply["error"], what
        error = {what: reply["error"] for what, reply in answer.items()}
        assert got[valid]["type"] == "control.applied" and got[valid]["did"] == ["queued"]
        assert "longer than 96" in error["300-character model id"]
        assert "unknown model" in error["unknown model"]
        for what, field in NOT_UTF8.items():  # a byte that is not UTF-8, in any field
            assert error[what].startswith(f"{field} is not UTF-8"), what
        assert "holds a control character" in error["NUL in model id"]
        assert no_pending(client)
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert model_folders(data_dir) == []  # a refused command leaves no folder behind
    finally:
        stop(daemon)
        client.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["command not UTF-8", "NUL in model id", "300-character model id"])
def test_each_reported_entry_alone_is_rejected_and_the_next_command_answered(
    daemon_setup: tuple[Path, Path, int], redis_url: str, what: str
) -> None:
    config, _, _ = daemon_setup
    client = redis.Redis.from_url(redis_url)
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        hostile = client.xadd(KEYS.control, dict(HOSTILE)[what]).decode()  # type: ignore[arg-type]
        valid = client.xadd(KEYS.control, {"command": "train", "model_id": XGB}).decode()
        got = wait_answered(client, [hostile, valid], daemon, timeout=20)
        assert got[hostile]["type"] == "control.rejected"
        assert got[valid]["type"] == "control.applied"
        assert no_pending(client)
    finally:
        stop(daemon)
        client.close()


@pytest.mark.timeout(60)
def test_a_file_system_error_while_applying_is_rejected_not_retried_as_a_redis_error(
    daemon_setup: tuple[Path, Path, int], redis_url: str
) -> None:
    """Issue #16, failure 2: the ``ENAMETOOLONG`` of a 300-character id came
    out of the handler as an ``OSError``, which the loop took for a Redis
    error: the entry was retried for ever and jammed the stream. Here the
    folder of a valid, unknown id is a file, so every read of its state fails
    with ``ENOTDIR``: the command is rejected with the cause (not the path),
    acknowledged, and the next command answered."""
    config, data_dir, _ = daemon_setup
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "models" / "xgb_DOGEUSDT_1h").write_text("a file where a folder should be")
    client = redis.Redis.from_url(redis_url)
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        fields = {"command": "promote", "model_id": "xgb_DOGEUSDT_1h", "version": VERSION}
        failing = client.xadd(KEYS.control, fields).decode()  # type: ignore[arg-type]
        valid = client.xadd(KEYS.control, {"command": "train", "model_id": XGB}).decode()
        got = wait_answered(client, [failing, valid], daemon, timeout=20)
        assert got[failing]["type"] == "control.rejected"
        assert got[failing]["error"] == "could not apply: Not a directory"
        assert got[valid]["type"] == "control.applied"
        assert no_pending(client)
        assert not daemon.has("control.redis_error")
    finally:
        stop(daemon)
        client.close()


@pytest.mark.timeout(60)
def test_an_altered_artifact_is_refused_without_showing_the_data_dir(
    daemon_setup: tuple[Path, Path, int], redis_url: str
) -> None:
    """Issue #16, failure 8 (answers showed the absolute data dir): promoting
    a version whose artifact fails its sha256 check is refused, and the
    answer names the file from the data dir on, never the data dir itself."""
    config, data_dir, _ = daemon_setup
    version = altered_version(data_dir, "xgb_DOGEUSDT_1h")
    client = redis.Redis.from_url(redis_url)
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        fields = {"command": "promote", "model_id": "xgb_DOGEUSDT_1h", "version": version}
        sent = client.xadd(KEYS.control, fields).decode()  # type: ignore[arg-type]
        got = wait_answered(client, [sent], daemon, timeout=20)
        assert got[sent]["type"] == "control.rejected"
        error = got[sent]["error"]
        assert "artifact refused" in error and "w.bin has sha256" in error
        assert f"{{data_dir}}/models/xgb_DOGEUSDT_1h/{version}: artifact w.bin" in error
        assert str(data_dir) not in error and str(data_dir.resolve()) not in error
        assert Registry(data_dir).active_version("xgb_DOGEUSDT_1h") is None
        assert no_pending(client)
    finally:
        stop(daemon)
        client.close()


@pytest.mark.timeout(120)
def test_entries_a_crashed_daemon_left_pending_are_answered_after_the_restart(
    daemon_setup: tuple[Path, Path, int], redis_url: str
) -> None:
    config, _, _ = daemon_setup
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(KEYS.control, GROUP, id="0", mkstream=True)
    hostile = client.xadd(KEYS.control, HOSTILE[0][1]).decode()  # type: ignore[arg-type]
    valid = client.xadd(KEYS.control, {"command": "train", "model_id": XGB}).decode()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_OUT)
    crashed = f"{socket.gethostname()}-{int(gone.stdout)}"  # a consumer whose process is gone
    client.xreadgroup(GROUP, crashed, {KEYS.control: ">"})  # read, never acknowledged
    daemon = DaemonProcess(config).start()
    try:
        got = wait_answered(client, [hostile, valid], daemon)
        assert got[hostile]["type"] == "control.rejected"
        assert got[valid]["type"] == "control.applied"
        assert no_pending(client)
    finally:
        stop(daemon)
        client.close()


_OUT: dict[str, Any] = {"capture_output": True, "text": True, "check": True}


@pytest.mark.timeout(120)
def test_the_equity_api_refuses_bad_ids_and_hides_the_data_dir(
    daemon_setup: tuple[Path, Path, int],
) -> None:
    config, data_dir, port = daemon_setup
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready")
        url = f"http://127.0.0.1:{port}/api/equity?model_id="
        for bad in ("xgb_BTC\x00USDT_1h", "xgb_" + "A" * 293 + "_1h", "../../x_BTC_1h"):
            status, body = http_get(url + urllib.parse.quote(bad))
            assert status == 400, (bad, body)
            assert "model id" in json.loads(body)["error"]
        status, body = http_get(url + "xgb_DOGEUSDT_1h")
        assert status == 404
        assert str(data_dir) not in body and str(data_dir.resolve()) not in body
        assert model_folders(data_dir) == []
    finally:
        stop(daemon)


def test_the_cli_refuses_bad_ids_and_an_unknown_model_leaves_no_folder(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    config = str(write_config(tmp_path / "config.toml", redis_url, data_dir, 0))
    too_long = "xgb_" + "A" * 293 + "_1h"
    for argv in (
        ["models", "promote", too_long, VERSION, "--direct"],
        ["models", "promote", "xgb_../../etc_1h", VERSION, "--direct"],
        ["models", "retire", XGB, "../../v1", "--direct"],
        ["models", "show", "nonsense"],
        ["train", "--now", "xgb_BTC/USDT_1h"],
    ):
        assert cli_main(["--config", config, *argv]) == EX_USAGE, argv
        assert capsys.readouterr().err.startswith("quantum-daemon: "), argv
    for _ in range(3):  # a burst of commands for models that do not exist
        code = cli_main(["--config", config, "models", "promote", "xgb_DOGEUSDT_1h", VERSION])
        assert code == EX_FAILURE
    assert model_folders(data_dir) == []
