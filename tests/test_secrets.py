"""No secret leaves the process: the one redaction (``domain/secrets.py``)
on every output.

A real redis-server that asks for a password (an ACL user, its password in
the URL's query) and an API token; the daemon runs, every route is read,
the commands run, the daemon crashes once (its API port taken) and stops on
SIGTERM once; every byte they wrote is searched for the secrets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantum_daemon.domain.config import load, secrets_of
from quantum_daemon.domain.events import Event, make_event
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.secrets import MASK, Redactor, url_secrets
from quantum_daemon.ingest.replay import publish_frame
from quantum_daemon.storage.events import publish_sync
from tests.conftest import make_bars
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.redis_secure import daemon_acl_rule, secure_redis

REPO = Path(__file__).resolve().parents[1]
REDIS_PASSWORD = "Rp-7f3a9c1e5b"
URL_PASSWORD = "Up-0d2b8e6a4c"
API_TOKEN = "Tk-9e1c7a5f3b2d"
WEBHOOK_SECRET = "Wh-5c3e1a9d7f0b"
HOOK_URL_PASSWORD = "Hp-8a6c4e2f0d1b"
SECRETS = (REDIS_PASSWORD, URL_PASSWORD, API_TOKEN, WEBHOOK_SECRET, HOOK_URL_PASSWORD)

# What a URL password may hold without percent-encoding (RFC 3986 userinfo).
USERINFO = st.text(
    alphabet=st.sampled_from(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&*+,;="
    ),
    min_size=1,
    max_size=40,
)
SECRET = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
    min_size=4,
    max_size=40,
)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QUANTUM_")}
    return subprocess.run(
        [sys.executable, "-m", "quantum_daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        cwd=REPO,
    )


def leaks(text: str, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    return [s for s in secrets if s in text]


# -- the redaction itself ----------------------------------------------------


@given(user=USERINFO.filter(lambda u: ":" not in u), password=USERINFO)
def test_a_url_password_is_hidden_whatever_it_holds(user: str, password: str) -> None:
    url = f"redis://{user}:{password}@db.example:6380/0"
    shown = Redactor()(f"connecting to {url} failed")
    assert f"redis://{user}:{MASK}@db.example:6380/0" in shown


@given(password=USERINFO.filter(lambda p: "&" not in p and ";" not in p and "," not in p))
def test_a_query_password_or_token_is_hidden(password: str) -> None:
    for key in ("password", "token", "PASSWORD", "api_key"):
        shown = Redactor()(f"redis://127.0.0.1:6379/0?db=1&{key}={password}&ssl=1")
        assert shown == f"redis://127.0.0.1:6379/0?db=1&{key}={MASK}&ssl=1"


@given(secret=SECRET, before=st.text(max_size=30), after=st.text(max_size=30))
def test_a_configured_secret_is_hidden_in_any_form(secret: str, before: str, after: str) -> None:
    redact = Redactor([secret])
    for text in (before + secret + after, json.dumps({"k": before + secret + after})):
        assert secret not in redact(text)
    assert json.dumps(secret)[1:-1] not in redact(json.dumps([before, secret, after]))
    assert repr(secret)[1:-1] not in redact(repr((before, secret)))


@given(text=st.text(alphabet=st.characters(blacklist_characters="=:@"), max_size=200))
def test_text_without_secrets_is_left_as_it_is(text: str) -> None:
    assert Redactor(["a-long-token-value"])(text) == text


def test_ordinary_urls_and_numbers_are_left_as_they_are() -> None:
    redact = Redactor()
    for text in ("redis://127.0.0.1:6379/0", "http://h:8787/api/x@y", "passenger=3", "ts=17"):
        assert redact(text) == text


def test_json_stays_json_after_redaction() -> None:
    body = {"url": 'redis://u:pa"ss@h/0?token=a\\"b', "n": [1, "token=x y"]}
    shown = Redactor(['pa"ss'])(json.dumps(body))
    assert json.loads(shown)["url"].startswith("redis://u:***@h/0?token=***")


def test_secrets_of_the_config_cover_token_password_and_url(tmp_path: Path) -> None:
    env = {
        "QUANTUM_REDIS_URL": f"redis://u:{URL_PASSWORD}@h:1/0?password={REDIS_PASSWORD}",
        "QUANTUM_API_TOKEN": API_TOKEN,
        "QUANTUM_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    hooks = tmp_path / "hooks.toml"
    hooks.write_text(f'[webhooks]\nurls = ["https://u:{HOOK_URL_PASSWORD}@example.org/h"]\n')
    assert set(SECRETS) <= set(secrets_of(load(hooks, env=env)))
    (tmp_path / "secret").write_text(f"{WEBHOOK_SECRET}\n")
    hooks.write_text(f'[webhooks]\nsecret_file = "{tmp_path / "secret"}"\n')
    assert WEBHOOK_SECRET in secrets_of(load(hooks, env={}))
    assert url_secrets("redis://h/0?password=a%20b") == ("a b", "a%20b")


# -- each output on its own (regressions of issue #16) -----------------------


def test_check_config_shows_no_url_password(tmp_path: Path) -> None:
    url = f"redis://daemon:{URL_PASSWORD}@127.0.0.1:6379/0?password={REDIS_PASSWORD}"
    config = tmp_path / "c.toml"
    config.write_text(f'[redis]\nurl = "{url}"\n[api]\ntoken = "{API_TOKEN}"\n')
    result = cli("--config", str(config), "check-config")
    assert result.returncode == 0, result.stderr
    assert "redis://daemon:***@127.0.0.1:6379/0?password=***" in result.stdout
    assert "token='***'" in result.stdout
    assert leaks(result.stdout + result.stderr) == []


def test_a_config_error_shows_no_url_password(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[redis]\nurl = "http://daemon:{URL_PASSWORD}@h/0?token={API_TOKEN}"\n')
    result = cli("--config", str(config), "check-config")
    assert result.returncode == 78
    assert "redis.url" in result.stderr and "http://daemon:***@h/0" in result.stderr
    assert leaks(result.stdout + result.stderr) == []


LOGGING_PROBE = """
import logging, sys
from quantum_daemon.runtime.logs import configure_logging, get_logger
configure_logging("info", sys.argv[1], secrets=[sys.argv[2]])
log = get_logger()
def connect(url, token):
    raise ConnectionError(f"cannot reach {url} with {token}")
try:
    connect("redis://u:URLPW-123@h:1/0", sys.argv[2])
except ConnectionError as exc:
    log.error("probe.failed", url="redis://h/0?password=QPW-456", exc_info=exc)
logging.getLogger("aiohttp.server").error("lib says redis://u:URLPW-123@h %s", sys.argv[2])
connect("rediss://:URLPW-123@h", sys.argv[2])
"""


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_log_lines_library_records_and_tracebacks_are_redacted(fmt: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOGGING_PROBE, fmt, API_TOKEN],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1  # the uncaught exception, printed by the excepthook
    assert "probe.failed" in done.stdout and "lib says" in done.stderr
    assert "ConnectionError: cannot reach rediss://:***@h" in done.stderr
    assert leaks(out, ("URLPW-123", "QPW-456", API_TOKEN)) == []


# -- everything, from a running daemon ---------------------------------------


def readme_routes(model_id: str) -> list[str]:
    """Every GET route of the README's HTTP API table."""
    routes: list[str] = []
    for row in (REPO / "README.md").read_text().splitlines():
        if row.startswith("| `GET "):
            cell = row.split("|")[1]
            routes += [m.group(1) for m in re.finditer(r"`(?:GET )?(/[^`]*)`", cell)]
    assert "/api/status" in routes and "/metrics" in routes
    return [r.replace("=ID", f"={model_id}") for r in routes]


def stream_head(url: str, seconds: float = 2.0) -> tuple[int, str]:
    """What a streamed route (server-sent events) sends in its first ``seconds``."""
    lines: list[bytes] = []
    with urllib.request.urlopen(url, timeout=seconds) as resp:
        with contextlib.suppress(TimeoutError):
            while line := resp.readline():
                lines.append(line)
        return resp.status, b"".join(lines).decode(errors="replace")


def http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


@pytest.mark.timeout(180)
def test_no_output_of_the_daemon_or_its_commands_shows_a_secret(tmp_path: Path) -> None:
    user = f"{daemon_acl_rule()} >{REDIS_PASSWORD}"
    with secure_redis(users=(user,)) as server:
        port = api_port()
        config = write_config(
            tmp_path / "c.toml",
            server.url_for("quantum-daemon", REDIS_PASSWORD),
            tmp_path / "data",
            port,
            extra='[ingest]\nsymbols = ["BTCUSDT"]\n[models]\nsymbols = ["BTCUSDT"]\n'
            'families = ["xgb"]\n'
            # a webhook whose URL holds a password, to a closed port: its dead letter
            f'[webhooks]\nenabled = true\nretries = 0\ntimeout_s = 1.0\nurls = '
            f'["http://hook:{HOOK_URL_PASSWORD}@127.0.0.1:{api_port()}/hook"]\n',
        )
        env = {"QUANTUM_API_TOKEN": API_TOKEN, "QUANTUM_WEBHOOK_SECRET": WEBHOOK_SECRET}
        outputs: dict[str, str] = {}
        daemon = DaemonProcess(config, env=env).start()
        try:
            daemon.wait_for("daemon.ready", timeout=60)
            admin = server.admin()
            publish_frame(
                admin, "quantum:bars:BTCUSDT:1h", make_bars(30, symbol="BTCUSDT").to_frame()
            )
            wait_stored(admin, "quantum:bars:BTCUSDT:1h", 30)
            publish_sync(admin, Keys(), control_event())
            outputs["webhook dead letter"] = repr(wait_dead_letter(admin))
            base = f"http://127.0.0.1:{port}"
            for route in readme_routes("xgb_BTCUSDT_1h"):
                fetch = stream_head if "/stream" in route else partial(http, "GET")
                code, body = fetch(base + route)
                outputs[f"GET {route} ({code})"] = body
            outputs["404"] = http("GET", base + f"/nope?token={API_TOKEN}")[1]
            outputs["POST, wrong token"] = http("POST", base + "/api/status")[1]
            bearer = {"Authorization": f"Bearer {API_TOKEN}"}
            outputs["POST, right token"] = http("POST", base + "/api/status", bearer)[1]
            status = json.loads(
                outputs[next(k for k in outputs if k.startswith("GET /api/status"))]
            )
            assert status["redis"]["url"].endswith("?password=***"), status["redis"]
            for argv in (("status", "--json"), ("check-config",), ("models", "list")):
                done = cli("--config", str(config), *argv, env=env)
                outputs[" ".join(argv)] = done.stdout + done.stderr
            assert json.loads(outputs["status --json"])["healthy"] is True
            daemon.send(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
        finally:
            daemon.kill()
        outputs["daemon run (SIGTERM)"] = "".join(daemon.raw_lines)
        outputs["daemon crash"] = crashed_daemon_output(config, port, env)
        admin.close()
    found = {name: leaks(text) for name, text in outputs.items() if leaks(text)}
    assert found == {}
    assert len(outputs) >= 15


def control_event() -> Event:
    return make_event(
        "control.applied", model_id="xgb_BTCUSDT_1h", family="xgb", symbol="BTCUSDT",
        tf="1h", version=None, at=datetime.now(UTC), transition="secrets-test",
    )  # fmt: skip


def wait_dead_letter(admin: Any, timeout: float = 30.0) -> list[Any]:
    """The webhook's dead letters, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if letters := admin.xrange("quantum:webhooks:dlq"):
            return letters
        time.sleep(0.1)
    raise AssertionError(f"no webhook dead letter within {timeout}s")


def wait_stored(admin: Any, stream: str, n: int, timeout: float = 30.0) -> None:
    """Until the daemon's group has read and acknowledged ``n`` entries."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        groups = admin.xinfo_groups(stream)
        if groups and groups[0]["entries-read"] == n and groups[0]["pending"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{stream}: {n} entries not acknowledged within {timeout}s")


def crashed_daemon_output(config: Path, port: int, env: dict[str, str]) -> str:
    """A daemon that crashes after start-up (its API port is taken): its
    traceback in ``daemon.crashed``."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        daemon = DaemonProcess(config, env=env).start()
        try:
            crash = daemon.wait_for("daemon.crashed", timeout=60)
            assert daemon.wait(timeout=30) == 1
        finally:
            daemon.kill()
    assert crash.get("exception"), crash  # the traceback is there, to be searched
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline and not daemon.raw_lines:
        time.sleep(0.05)
    return "".join(daemon.raw_lines)


def test_every_route_of_the_api_is_in_the_readme_table() -> None:
    """``readme_routes`` above reads every route only while the README lists them all."""
    from quantum_daemon.daemon import Daemon  # noqa: F401  (the routes' owner loads)

    listed = set(readme_routes("m"))
    source = "\n".join(p.read_text() for p in (REPO / "quantum_daemon").rglob("*.py"))
    served = set(re.findall(r"web\.get\(\s*\"(/[^\"]*)\"", source))
    assert served <= {r.split("?")[0] for r in listed}, served - listed
