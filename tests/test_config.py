"""Configuration: typed, frozen, strict; bad config exits 78 naming the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from quantum_daemon.domain import config as config_mod
from quantum_daemon.domain.config import EX_CONFIG, ConfigError, load

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
    "shadow period upside down": (
        "[promotion]\nshadow_min_bars = 48\nshadow_max_bars = 24\n",
        "promotion.shadow_max_bars",
    ),
    "no candidate in shadow": ("[inference]\nmax_candidates = 0\n", "inference.max_candidates"),
    "bad inference value": ("[inference]\nrequest_timeout_s = -1\n", "inference.request_timeout_s"),
    "inference wrong type": ('[inference]\nsignals_maxlen = "many"\n', "inference.signals_maxlen"),
    # the judge's knobs (docs/judge.md)
    "record rule above 1": ("[promotion]\nmin_dsr = 1.5\n", "promotion.min_dsr"),
    "no test level": ("[promotion]\ndm_alpha = 0.0\n", "promotion.dm_alpha"),
    "unknown trial scope": ('[promotion]\ntrial_scope = "galaxy"\n', "promotion.trial_scope"),
    "record window short": (
        "[promotion]\nmin_record_bars = 500\nrecord_bars = 100\n",
        "promotion.record_bars",
    ),
    "drift confidence": ("[promotion]\ndrift_delta = 1.0\n", "promotion.drift_delta"),
    "negative kill margin": ("[promotion]\nkill_margin = -0.1\n", "promotion.kill_margin"),
    "calibration bound": ("[promotion]\nmax_ece = 2\n", "promotion.max_ece"),
    # the exchange feed (docs/feed.md)
    "unknown feed key": ("[feed]\nspeed = 2\n", "feed.speed"),
    "feed pair without quote": ('[feed]\nsymbols = ["BTCUSDT"]\n', "feed.symbols"),
    "feed without pairs": ("[feed]\nsymbols = []\n", "feed.symbols"),
    "feed since not a time": ('[feed]\nsince = "yesterday"\n', "feed.since"),
    "feed exchange id": ('[feed]\nexchange = "Bin ance"\n', "feed.exchange"),
    "feed retries upside down": ("[feed]\nretry_base_s = 5\nretry_max_s = 1\n", "feed.retry_max_s"),
    "feed request longer than a stall": (
        "[feed]\nenabled = true\nrequest_timeout_s = 90\n",
        "feed.request_timeout_s",
    ),
    "feed series not ingested": (
        '[feed]\nenabled = true\nsymbols = ["SOL/USDT"]\n',
        "feed.symbols",
    ),
    # webhooks (docs/push.md)
    "webhooks unknown key": ('[webhooks]\nurl = "http://h/x"\n', "webhooks.url"),
    "webhook not http": ('[webhooks]\nurls = ["ftp://h/x"]\n', "webhooks.urls"),
    "webhook twice": ('[webhooks]\nurls = ["http://h/x", "http://h/x"]\n', "webhooks.urls"),
    "webhooks without url": ("[webhooks]\nenabled = true\n", "webhooks.urls"),
    "webhooks without secret": (
        '[webhooks]\nenabled = true\nurls = ["http://127.0.0.1:9/x"]\n',
        "webhooks.secret",
    ),
    "webhook secret file missing": (
        '[webhooks]\nsecret_file = "/nonexistent/secret"\n',
        "webhooks.secret_file",
    ),
    "webhook timeout": ("[webhooks]\ntimeout_s = 0\n", "webhooks.timeout_s"),
    "sse bound": ("[api]\nsse_max_clients = 0\n", "api.sse_max_clients"),
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


def test_inference_and_shadow_defaults() -> None:
    cfg = load(None, env={})
    assert (cfg.promotion.shadow_min_bars, cfg.promotion.shadow_max_bars) == (120, 720)
    assert (cfg.promotion.min_dsr, cfg.promotion.dm_alpha) == (0.95, 0.05)
    inference = cfg.inference
    assert inference.max_candidates == 2
    assert inference.signals_maxlen == 10_000
    assert inference.context_bars == 512
    assert inference.worker_threads == 1
    assert inference.request_timeout_s == 120.0
    assert inference.retention_days == 90
    assert inference.max_catch_up == 1000


def test_a_shadow_period_of_zero_bars_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "at-once.toml"
    path.write_text("[promotion]\nshadow_min_bars = 0\n[inference]\nmax_candidates = 1\n")
    cfg = load(path, env={})
    assert cfg.promotion.shadow_min_bars == 0 and cfg.inference.max_candidates == 1


@pytest.mark.parametrize("command", ["run", "check-config", "feed"])
@pytest.mark.parametrize(
    "name", ["unknown key", "wrong type", "bad value", "shadow period upside down", "missing file"]
)
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


def test_the_feed_is_off_by_default_and_maps_pairs_to_stream_symbols(tmp_path: Path) -> None:
    assert load(None, env={}).feed.enabled is False
    path = tmp_path / "feed.toml"
    path.write_text(
        '[ingest]\ndiscover = true\n[feed]\nenabled = true\nsince = "2024-08-21T08:00:00Z"\n'
        'symbols = ["BTC/USDT", "ETH/USDT:USDT"]\ntimeframes = ["5m", "1h"]\n'
    )
    feed = load(path, env={}).feed
    assert feed.series() == [
        ("BTC/USDT", "BTCUSDT", "5m"),
        ("BTC/USDT", "BTCUSDT", "1h"),
        ("ETH/USDT:USDT", "ETHUSDT", "5m"),
        ("ETH/USDT:USDT", "ETHUSDT", "1h"),
    ]
    assert feed.since_ms() == 1_724_227_200_000


def test_webhook_secret_from_env_credential_or_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[webhooks]\nenabled = true\nurls = ["https://hooks.example.org/q"]\n')
    assert load(path, env={"QUANTUM_WEBHOOK_SECRET": "from-env"}).webhooks.secret == "from-env"
    (tmp_path / "webhook_secret").write_text("from-credential\n")
    credential = load(path, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert credential.webhooks.secret.reveal() == "from-credential"
    (tmp_path / "file").write_text("from-file\n")
    path.write_text(path.read_text() + f'secret_file = "{tmp_path / "file"}"\n')
    cfg = load(path, env={})
    assert cfg.webhooks.secret.reveal() == "from-file"
    assert "from-file" not in repr(cfg)
    assert not load(None, env={}).webhooks.enabled  # off by default
