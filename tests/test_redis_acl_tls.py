"""Redis with least privilege and with TLS, on real redis-servers.

- The daemon runs as the ACL user of ``systemd/redis-acl.conf`` (the rule
  docs/operations.md prints: one text, checked equal here) through ingest,
  a training, a promotion by the CLI and live signals, and Redis logs no
  refusal (``ACL LOG``).
- A rule missing a command or a key pattern stops the daemon with exit code
  78 (systemd does not restart it: ``RestartPreventExitStatus=78``) and one
  clear ``redis.permission_denied`` line, instead of retrying for ever.
- Over a TLS listener with a test CA (``rediss://``, ``[redis] tls_ca_file``)
  the daemon and the CLI work; without the CA, or with another CA, the
  certificate is refused and the daemon is not ready.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from quantum_daemon.domain.config import load
from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.ingest.replay import publish_frame
from quantum_daemon.storage.bar_files import read_bar_file
from tests.conftest import make_bars
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.redis_secure import (
    ACL_RULE_FILE,
    daemon_acl_rule,
    make_cert_authority,
    secure_redis,
    without,
)

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "acl-Pw-5d9e2f"
USER = "quantum-daemon"
BARS = REPO / "quantum_daemon" / "data" / "BTC_USDT-1h.feather"
STREAM = "quantum:bars:BTCUSDT:1h"
# One quick family that trains on the bundled bars in seconds; gates open
# enough that its version is promoted, so that signals follow.
QUICK_ZOO = """
[ingest]
symbols = ["BTCUSDT"]
[models]
families = ["xgb"]
symbols = ["BTCUSDT"]
[training]
workers = 1
history_bars = 2105
[evaluation]
n_test_windows = 1
position_threshold = 0.0
[promotion]
min_trades = 0
min_dsr = 0.0
beat_baselines = false
max_ece = 1.0
dm_alpha = 1.0
min_profit_factor = 0.0
shadow_min_bars = 0
"""


def cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantum_daemon", "--config", str(config), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_the_rule_in_the_docs_is_the_shipped_file() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```(?:text|conf)?\n(user quantum-daemon .*?)\n```", docs)
    assert blocks == [daemon_acl_rule()], f"docs/operations.md and {ACL_RULE_FILE} differ"


@pytest.mark.timeout(240)
def test_ingest_training_and_signals_under_the_least_privilege_user(tmp_path: Path) -> None:
    with secure_redis(users=(f"{daemon_acl_rule()} >{PASSWORD}",)) as server:
        admin = server.admin()
        port = api_port()
        config = write_config(
            tmp_path / "c.toml", server.url_for(USER, PASSWORD), tmp_path / "data", port, QUICK_ZOO
        )
        frame = read_bar_file(BARS).frame
        daemon = DaemonProcess(config).start()
        try:
            daemon.wait_for("daemon.ready", timeout=60)
            publish_frame(admin, STREAM, frame.iloc[:2300])
            daemon.wait_for("model.promoted", timeout=150)
            listing = cli(config, "models", "list", "--json")
            assert listing.returncode == 0, listing.stderr
            version = json.loads(listing.stdout)[0]["version"]
            # An operator command through the daemon, as the same user: the
            # version is active already, so the daemon answers that it did nothing.
            promoted = cli(config, "models", "promote", "xgb_BTCUSDT_1h", version)
            assert promoted.returncode == 0, promoted.stderr
            publish_frame(admin, STREAM, frame.iloc[2300:2310])
            wait_until(lambda: admin.exists("quantum:signals:BTCUSDT:1h"), 60, "a signal")
            wait_until(lambda: admin.xlen("quantum:signals:BTCUSDT:1h") >= 10, 60, "10 signals")
            status = cli(config, "status", "--json")
            assert status.returncode == 0, status.stdout + status.stderr
            assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
            daemon.send(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
        finally:
            daemon.kill()
        refusals = [(e["reason"], e["object"]) for e in admin.acl_log()]
        admin.close()
    assert refusals == []
    assert not daemon.has("redis.permission_denied")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "missing",
    [
        "+xreadgroup",
        "~quantum:signals:*",
        "+evalsha +eval",
        "~quantum:daemon:*",
    ],
)
def test_a_missing_permission_stops_the_daemon_with_exit_78(tmp_path: Path, missing: str) -> None:
    rule = without(daemon_acl_rule(), *missing.split())
    with secure_redis(users=(f"{rule} >{PASSWORD}",)) as server:
        admin = server.admin()
        port = api_port()
        config = write_config(
            tmp_path / "c.toml", server.url_for(USER, PASSWORD), tmp_path / "data", port, QUICK_ZOO
        )
        daemon = DaemonProcess(config).start()
        try:
            # Bars and a lifecycle event make every path run (signals, scripts).
            publish_frame(admin, STREAM, make_bars(30, symbol="BTCUSDT").to_frame())
            admin.xadd("quantum:control", {"command": "retire", "model_id": "xgb_BTCUSDT_1h"})
            denied = daemon.wait_for("redis.permission_denied", timeout=60)
            code = exit_code(daemon, timeout=60)
        finally:
            daemon.kill()
        admin.close()
    assert code == 78
    assert "the Redis user lacks a permission" in denied["error"]
    assert "systemd/redis-acl.conf" in denied["error"]
    assert sum(daemon.has(e) for e in ("daemon.crashed", "daemon.stopped")) >= 1


def exit_code(daemon: DaemonProcess, timeout: float) -> int:
    try:
        return daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tail = "".join(daemon.raw_lines[-30:])
        raise AssertionError(f"the daemon did not exit within {timeout}s:\n{tail}") from None


@pytest.mark.timeout(120)
def test_daemon_and_cli_over_tls_with_the_configured_ca(tmp_path: Path) -> None:
    ca = make_cert_authority(tmp_path / "pki")
    other = make_cert_authority(tmp_path / "other", name="other")
    with secure_redis(users=(f"{daemon_acl_rule()} >{PASSWORD}",), tls=ca) as server:
        url = server.url_for(USER, PASSWORD)
        assert url.startswith("rediss://")
        admin = server.admin()
        port = api_port()
        tls = f'tls_ca_file = "{ca.ca}"\n'
        config = write_config(
            tmp_path / "c.toml", url, tmp_path / "data", port, "[ingest]\nsymbols = ['BTCUSDT']\n"
        )
        config.write_text(config.read_text().replace("[redis]\n", f"[redis]\n{tls}"))
        daemon = DaemonProcess(config).start()
        try:
            daemon.wait_for("daemon.ready", timeout=60, redis_up=True)
            publish_frame(admin, STREAM, make_bars(20, symbol="BTCUSDT").to_frame())
            wait_until(
                lambda: (g := admin.xinfo_groups(STREAM)) and g[0]["entries-read"] == 20,
                30,
                "20 bars read over TLS",
            )
            assert wait_until(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 10, "ready")
            status = cli(config, "status", "--json")
            assert status.returncode == 0, status.stdout + status.stderr
            daemon.send(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
        finally:
            daemon.kill()
        admin.close()
        for name, ca_line in (("no CA", ""), ("another CA", f'tls_ca_file = "{other.ca}"\n')):
            refused = tmp_path / f"{name}.toml"
            refused.write_text(config.read_text().replace(tls, ca_line))
            assert_certificate_refused(refused, port)


def assert_certificate_refused(config: Path, port: int) -> None:
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready", timeout=60, redis_up=False)
        code, body = get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503 and "CERTIFICATE_VERIFY_FAILED" in body["reason"], body
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        daemon.kill()


def test_tls_ca_file_needs_a_rediss_url_and_an_existing_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"redis\.tls_ca_file.*rediss://"):
        load(_toml(tmp_path, "redis://h/0", ca), env={})
    with pytest.raises(ConfigError, match=r"redis\.tls_ca_file.*no such file"):
        load(_toml(tmp_path, "rediss://h/0", tmp_path / "missing.pem"), env={})
    cfg = load(_toml(tmp_path, "rediss://h/0", ca), env={})
    assert cfg.redis.client_options()["ssl_ca_certs"] == str(ca)
    assert "ssl_ca_certs" not in cfg.redis.client_options("redis://other/0")


def _toml(tmp_path: Path, url: str, ca: Path) -> Path:
    path = tmp_path / "tls.toml"
    path.write_text(f'[redis]\nurl = "{url}"\ntls_ca_file = "{ca}"\n')
    return path
