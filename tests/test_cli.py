"""The real CLI, as a subprocess: ``--config`` before or after the sub-command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_daemon.cli import build_parser
from quantum_daemon.domain.errors import EX_CONFIG, EX_FAILURE, EX_NOINPUT, EX_OK

# Each sub-command with the arguments that take it past the config.
COMMANDS = {
    "run": [],
    "check-config": [],
    "status": ["--timeout", "1"],
    "train": ["--family", "xgb", "--symbol", "BTCUSDT", "--tf", "1h"],
    "models list": [],
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    return subprocess.run(
        [sys.executable, "-m", "quantum_daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def invocation(command: str, config: Path, position: str) -> list[str]:
    """``--config FILE`` before the sub-command, or after it (and its action)."""
    words = [*command.split(), *COMMANDS[command]]
    option = ["--config", str(config)]
    return [*option, *words] if position == "before" else [*words, *option]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    """Nothing listens on its Redis or API port; its data dir is empty."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = tmp_path / "good.toml"
    path.write_text(
        f'[redis]\nurl = "redis://127.0.0.1:{free_port()}/0"\n'
        f'[storage]\ndata_dir = "{data_dir}"\n'
        f"[api]\nport = {free_port()}\n"
    )
    return path


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text("[api]\nprot = 1\n")
    return path


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_config_exits_78_in_either_position(
    command: str, position: str, bad_config: Path
) -> None:
    result = cli(*invocation(command, bad_config, position))
    assert result.returncode == EX_CONFIG, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "config error" in lines[0] and "api.prot" in lines[0]


@pytest.mark.parametrize("position", ["before", "after"])
def test_check_config_reads_the_given_file(position: str, good_config: Path) -> None:
    result = cli(*invocation("check-config", good_config, position))
    assert result.returncode == EX_OK, result.stderr
    assert f"config OK ({good_config})" in result.stdout
    assert str(good_config.parent / "data") in result.stdout


@pytest.mark.parametrize("position", ["before", "after"])
def test_status_reports_no_daemon(position: str, good_config: Path) -> None:
    result = cli(*invocation("status", good_config, position), "--json")
    assert result.returncode == EX_FAILURE, result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert report["heartbeat"]["alive"] is False and "redis" in report["heartbeat"]["error"]


@pytest.mark.parametrize("position", ["before", "after"])
def test_train_looks_in_the_configured_data_dir(position: str, good_config: Path) -> None:
    result = cli(*invocation("train", good_config, position))
    assert result.returncode == EX_NOINPUT, result.stderr
    assert f"no bar store at {good_config.parent / 'data'}" in result.stderr


@pytest.mark.parametrize("position", ["before", "after", "between"])
def test_models_list_reads_the_configured_registry(position: str, good_config: Path) -> None:
    if position == "between":
        args = ["models", "--config", str(good_config), "list"]
    else:
        args = invocation("models list", good_config, position)
    result = cli(*args)
    assert result.returncode == EX_OK, result.stderr
    assert "no model versions yet" in result.stdout


# Every sub-command (and action) with the positional arguments it needs.
EVERY_COMMAND = [
    ["run"],
    ["check-config"],
    ["status"],
    ["train", "--family", "xgb"],
    ["models", "list"],
    ["models", "show", "xgb_BTCUSDT_1h"],
    ["models", "promote", "xgb_BTCUSDT_1h", "v1"],
    ["models", "retire", "xgb_BTCUSDT_1h", "v1"],
    ["models", "rollback", "xgb_BTCUSDT_1h"],
    ["replay", "bars.csv"],
    ["bars", "stats"],
    ["simulate", "--symbols", "BTCUSDT"],
    ["version"],
]


@pytest.mark.parametrize("words", EVERY_COMMAND, ids=" ".join)
def test_every_command_takes_the_config_before_or_after(words: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["--config", "a.toml", *words]).config == "a.toml"
    assert parser.parse_args([*words, "--config", "b.toml"]).config == "b.toml"
    assert parser.parse_args(["-c", "a.toml", *words, "-c", "b.toml"]).config == "b.toml"
    assert parser.parse_args(words).config is None
