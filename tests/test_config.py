"""Configuration: typed, frozen, strict; bad config exits 78 naming the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_daemon import config as config_mod
from quantum_daemon.config import EX_CONFIG, ConfigError, load

REPO = Path(__file__).resolve().parents[1]

BAD_CONFIGS = {
    "unknown key": ("[api]\nprot = 1\n", "api.prot"),
    "unknown section": ("[apii]\nport = 1\n", "apii"),
    "wrong type": ('[api]\nport = "eighty"\n', "api.port"),
    "bad value": ("[trust]\nshare = 1.5\n", "trust.share"),
    "bad choice": ('[logging]\nlevel = "loud"\n', "logging.level"),
    "bad timeframe": ('[ingest]\ntimeframes = ["7m"]\n', "ingest.timeframes"),
    "negative": ("[evaluation]\nfee_bps = -1\n", "evaluation.fee_bps"),
    "not toml": ("[api\nport=1\n", "not valid TOML"),
}


def test_shipped_config_is_valid() -> None:
    cfg = load(REPO / "config.toml", env={})
    assert cfg.redis.prefix == "quantum"
    assert cfg.api.host == "127.0.0.1" and cfg.api.port == 8787


def test_defaults_match_the_documented_example() -> None:
    assert load(None, env={}) == load(REPO / "config.toml", env={})


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_rejected_naming_the_key(name: str, tmp_path: Path) -> None:
    text, needle = BAD_CONFIGS[name]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load(path, env={})


@pytest.mark.parametrize("command", ["run", "check-config"])
@pytest.mark.parametrize("name", ["unknown key", "wrong type", "bad value", "missing file"])
def test_cli_exits_78_with_one_line(command: str, name: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    if name != "missing file":
        path.write_text(BAD_CONFIGS[name][0])
    result = subprocess.run(
        [sys.executable, "-m", "quantum_daemon", "--config", str(path), command],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == EX_CONFIG
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    expected = "not found" if name == "missing file" else BAD_CONFIGS[name][1]
    assert expected in lines[0]


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "QUANTUM_REDIS_URL": "redis://10.0.0.9:6380/2",
        "QUANTUM_DATA_DIR": str(tmp_path),
        "QUANTUM_API_PORT": "9999",
        "QUANTUM_API_TOKEN": "s3cret-token",
    }
    cfg = load(None, env=env)
    assert cfg.redis.url == "redis://10.0.0.9:6380/2"
    assert cfg.storage.data_dir == tmp_path
    assert cfg.api.port == 9999
    assert cfg.api.token.reveal() == "s3cret-token"


def test_bad_environment_port_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="QUANTUM_API_PORT"):
        load(None, env={"QUANTUM_API_PORT": "http"})


def test_secrets_never_show_in_repr_or_check_config(tmp_path: Path) -> None:
    env = {"QUANTUM_API_TOKEN": "s3cret-token", "QUANTUM_REDIS_PASSWORD": "hunter2"}
    cfg = load(None, env=env)
    assert "s3cret" not in repr(cfg) and "hunter2" not in repr(cfg)
    assert "s3cret" not in repr(cfg.api.token)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantum_daemon",
            "--config",
            str(REPO / "config.toml"),
            "check-config",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**__import__("os").environ, **env},
    )
    assert result.returncode == 0
    assert "s3cret" not in result.stdout and "hunter2" not in result.stdout


def test_systemd_credentials_are_read(tmp_path: Path) -> None:
    (tmp_path / "redis_password").write_text("from-credential\n")
    cfg = load(None, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.redis.password.reveal() == "from-credential"


def test_sections_are_frozen() -> None:
    cfg = load(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.api.port = 1  # type: ignore[misc]


def test_every_section_has_a_documented_example() -> None:
    text = (REPO / "config.toml").read_text()
    for section in dataclasses.fields(config_mod.Config):
        assert f"[{section.name}]" in text
