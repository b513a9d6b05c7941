"""The feed as real processes against the local fake Binance (real bars in
Binance's format): inside the daemon with ``[feed] enabled`` (published,
ingested, watched like every loop), and alone as ``quantum-daemon feed``
(resumes where the streams stand, exits 78 on a pair the exchange does not
list). With the feed off, the daemon's import path never loads ccxt."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from quantum_daemon.storage.bar_store import DB_FILENAME
from tests.binance_server import BinanceData, running_binance
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.feed_helpers import ms, recorded_bars, stream_ts
from tests.http_helpers import get_json

DATA = BinanceData.recorded()
NOW = int(time.time() * 1000)  # the fake answers as of now: every recorded bar has closed


def feed_section(api_url: str, **keys: str) -> str:
    values = {
        "enabled": "true",
        "symbols": '["BTC/USDT", "ETH/USDT"]',
        "since": '"2024-08-21T08:00:00Z"',
        "page_limit": "200",
        "api_url": f'"{api_url}"',
        "retry_base_s": "0.1",
        "retry_max_s": "0.5",
        **keys,
    }
    return "[feed]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def stored_rows(data_dir: Path, symbol: str) -> list[tuple]:
    path = data_dir / DB_FILENAME
    if not path.exists():
        return []
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return conn.execute(
                "SELECT symbol, tf, ts, open, high, low, close, volume FROM bars "
                "WHERE symbol = ? ORDER BY ts",
                (symbol,),
            ).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []


def wait_for(check, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_daemon_runs_the_feed_as_a_watched_loop_and_ingests_its_bars(
    redis_url: str, tmp_path: Path
) -> None:
    data_dir, port = tmp_path / "data", api_port()
    with running_binance(NOW) as fake:
        extra = (
            '[ingest]\nsymbols = ["BTCUSDT", "ETHUSDT"]\nblock_ms = 100\n'
            '[models]\nsymbols = ["NOMODELUSDT"]\n'  # nothing trains on the fed series
            + feed_section(fake.url)
        )
        config = write_config(tmp_path / "config.toml", redis_url, data_dir, port, extra)
        daemon = DaemonProcess(config).start()
        try:
            daemon.wait_for("feed.started", timeout=30)
            for symbol in ("BTCUSDT", "ETHUSDT"):
                wait_for(lambda s=symbol: len(stored_rows(data_dir, s)) == 380, 30, symbol)
            _, status = get_json(f"http://127.0.0.1:{port}/api/status")
            assert status["loops"]["feed"]["state"] == "alive"
            assert status["feed"]["series"]["BTCUSDT:1h"]["published"] == 380
            assert status["feed"]["series"]["ETHUSDT:1h"]["newest_ts"] == ms("2024-09-06T03:00")
            daemon.send(signal.SIGTERM)
            assert daemon.wait(timeout=20) == 0
        finally:
            daemon.kill()
    assert daemon.has("feed.stopped")
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert stored_rows(data_dir, symbol) == [tuple(b) for b in recorded_bars(DATA, symbol)]
    assert redis.Redis.from_url(redis_url).xlen("quantum:bars:dlq") == 0


def test_the_standalone_feed_publishes_stops_on_sigterm_and_resumes_without_republishing(
    redis_url: str, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_url)
    args = ("feed", "--exchange", "binance", "--symbols", "BTC/USDT,ETH/USDT", "--tf", "1h")
    args += ("--since", "2024-09-05T00:00:00Z")
    expected = [b.ts for b in recorded_bars(DATA, "BTCUSDT") if b.ts >= ms("2024-09-05T00:00")]
    with running_binance(NOW) as fake:
        extra = feed_section(fake.url, enabled="false")
        config = write_config(tmp_path / "config.toml", redis_url, tmp_path / "data", 0, extra)
        for run in range(2):
            feed = DaemonProcess(config, args=args).start()
            try:
                feed.wait_for("feed.started", timeout=30)
                wait_for(lambda: stream_ts(r, "ETHUSDT") == expected, 20, "both series")
                asked = 2 * (run + 1)  # both series asked once more in each run
                wait_for(lambda n=asked: len(fake.kline_requests()) >= n, 20, "requests")
                assert stream_ts(r, "BTCUSDT") == expected
                feed.send(signal.SIGTERM)
                assert feed.wait(timeout=15) == 0
            finally:
                feed.kill()
        resumed = [e for e in feed.events if e.get("event") == "feed.resuming"]
        assert {e["published_ts"] for e in resumed} == {expected[-1]}
    assert not (tmp_path / "data").exists()  # the standalone feed writes nothing there


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (("--symbols", "DOGE/USDT"), "does not list 'DOGE/USDT'"),
        (("--tf", "7m"), "feed.timeframes"),
        ((), "refused at start (AuthenticationError)"),
    ],
)
def test_a_pair_timeframe_or_login_it_cannot_feed_exits_78(
    redis_url: str, tmp_path: Path, option: tuple[str, ...], needle: str
) -> None:
    with running_binance(NOW) as fake:
        fake.markets_refused = not option
        extra = feed_section(fake.url, enabled="false")
        config = write_config(tmp_path / "config.toml", redis_url, tmp_path / "data", 0, extra)
        feed = DaemonProcess(config, args=("feed", *option)).start()
        try:
            assert feed.wait(timeout=30) == 78
        finally:
            feed.kill()
    assert needle in "".join(feed.raw_lines)
    assert redis.Redis.from_url(redis_url).keys("quantum:bars:*") == []


def test_with_the_feed_off_the_daemon_import_path_never_loads_ccxt() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import quantum_daemon.daemon, quantum_daemon.cli, quantum_daemon.commands\n"
        "for m in pkgutil.iter_modules(quantum_daemon.commands.__path__):\n"
        "    importlib.import_module(f'quantum_daemon.commands.{m.name}')\n"
        "quantum_daemon.cli.build_parser()\n"
        "import quantum_daemon.ingest.feed\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ccxt'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_daemon_with_a_feed_pair_the_exchange_does_not_list_exits_78(
    redis_url: str, tmp_path: Path
) -> None:
    with running_binance(NOW) as fake:
        extra = "[ingest]\ndiscover = true\n" + feed_section(fake.url, symbols='["DOGE/USDT"]')
        config = write_config(tmp_path / "config.toml", redis_url, tmp_path / "data", 0, extra)
        daemon = DaemonProcess(config).start()
        try:
            assert daemon.wait(timeout=40) == 78
        finally:
            daemon.kill()
    died = [e for e in daemon.events if e.get("event") == "liveness.died"]
    assert died and died[0]["loop"] == "feed" and "DOGE/USDT" in died[0]["why"]
