"""Ingest in the real daemon process: killed with SIGKILL in the middle of
ingest (more than once) it still ends with exactly the published bars; a
Redis restart in the middle loses nothing and ingest resumes by itself."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import redis

from quantum_daemon.domain.bars import Bars
from quantum_daemon.storage.bar_store import DB_FILENAME
from quantum_daemon_dev.redis_server import RedisServer
from tests.conftest import make_bars
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.ingest_helpers import KEYS, dlq, group_state, publish

SYMBOLS = ("CRASHAUSDT", "CRASHBUSDT", "CRASHCUSDT", "CRASHDUSDT")  # no model trains on these
TOTAL = 100_000


def ingest_config(tmp_path: Path, redis_url: str, symbols: tuple[str, ...]) -> Path:
    listed = ", ".join(f'"{s}"' for s in symbols)
    extra = (
        f'[ingest]\nsymbols = [{listed}]\ntimeframes = ["1m"]\nbatch_size = 250\nblock_ms = 100\n'
    )
    return write_config(tmp_path / "config.toml", redis_url, tmp_path / "data", api_port(), extra)


def series_for(symbols: tuple[str, ...], per_series: int) -> list[Bars]:
    return [make_bars(per_series, seed=i, tf="1m", symbol=s) for i, s in enumerate(symbols)]


def stored_count(data_dir: Path) -> int:
    path = data_dir / DB_FILENAME
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as conn:
            return int(conn.execute("SELECT COALESCE(SUM(count), 0) FROM series").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not created yet
        return 0


def stored_rows(data_dir: Path) -> tuple[int, list[tuple]]:
    """(the series table's total, every bar row) of the store."""
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        summary = int(conn.execute("SELECT SUM(count) FROM series").fetchone()[0])
        rows = conn.execute(
            "SELECT symbol, tf, ts, open, high, low, close, volume FROM bars "
            "ORDER BY symbol, tf, ts"
        ).fetchall()
    return summary, rows


def expected_rows(all_series: list[Bars]) -> list[tuple]:
    rows = []
    for bars in sorted(all_series, key=lambda b: b.symbol):
        columns = (bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume)
        rows.extend((bars.symbol, bars.tf, *values) for values in zip(*columns, strict=True))
    return [(s, tf, int(t), *map(float, rest)) for s, tf, t, *rest in rows]


def publish_in_chunks(url: str, all_series: list[Bars], chunk: int, pause_s: float) -> None:
    """Interleave the series chunk by chunk, like live publishers."""
    client = redis.Redis.from_url(url)
    for start in range(0, len(all_series[0]), chunk):
        for bars in all_series:
            publish(client, bars.slice(start, start + chunk))
        time.sleep(pause_s)
    client.close()


def wait_for(check, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def wait_all_acked(client: redis.Redis, symbols: tuple[str, ...], tf: str, within: float) -> None:
    streams = [KEYS.bars(s, tf) for s in symbols]
    wait_for(lambda: all(group_state(client, s) == (0, 0) for s in streams), within, "acks")


@pytest.mark.timeout(240)
def test_sigkill_in_the_middle_of_ingest_loses_and_doubles_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    all_series = series_for(SYMBOLS, TOTAL // len(SYMBOLS))
    config = ingest_config(tmp_path, redis_url, SYMBOLS)
    data_dir = tmp_path / "data"
    publisher = threading.Thread(
        target=publish_in_chunks, args=(redis_url, all_series, 500, 0.02), daemon=True
    )
    publisher.start()
    rng = random.Random(7)
    kills = []
    for threshold in sorted(rng.sample(range(10_000, 80_000), 3)):
        daemon = DaemonProcess(config).start()
        try:
            daemon.wait_for("daemon.ready", timeout=30)
            wait_for(lambda t=threshold: stored_count(data_dir) >= t, 60, f"{threshold} stored")
            time.sleep(rng.uniform(0, 0.05))
            daemon.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            assert daemon.wait(timeout=10) == -signal.SIGKILL
        finally:
            daemon.kill()
        kills.append(stored_count(data_dir))
    assert kills[0] < TOTAL // 2 and kills[-1] < TOTAL  # the kills hit the middle of ingest

    publisher.join(timeout=60)
    final = DaemonProcess(config).start()
    client = redis.Redis.from_url(redis_url)
    try:
        final.wait_for("daemon.ready", timeout=30)
        wait_all_acked(client, SYMBOLS, "1m", within=90)
        final.send(signal.SIGTERM)
        assert final.wait(timeout=20) == 0
    finally:
        final.kill()
    summary, rows = stored_rows(data_dir)
    assert rows == expected_rows(all_series)  # none missing, none doubled, values exact
    assert summary == len(rows) == TOTAL
    assert dlq(client) == []  # re-deliveries of stored bars were no-ops, not conflicts
    consumers = client.xinfo_consumers(KEYS.bars(SYMBOLS[0], "1m"), "quantum-daemon")
    assert [c["pending"] for c in consumers] == [0]  # the dead consumers were taken over


@pytest.mark.timeout(180)
def test_a_redis_restart_in_the_middle_loses_nothing(tmp_path: Path) -> None:
    server = RedisServer(appendonly=True).start()
    symbols = ("RESTARTAUSDT", "RESTARTBUSDT")
    all_series = series_for(symbols, 10_000)
    config = ingest_config(tmp_path, server.url, symbols)
    daemon = DaemonProcess(config)
    try:
        for bars in all_series:
            publish(redis.Redis.from_url(server.url), bars.slice(0, 6_000))
        daemon.start().wait_for("daemon.ready", timeout=30)
        wait_for(lambda: stored_count(tmp_path / "data") > 2_000, 60, "ingest under way")
        server.process.kill()  # type: ignore[union-attr]  # a hard crash; AOF fsyncs every write
        server.process.wait()  # type: ignore[union-attr]
        server.process = None
        daemon.wait_for("redis.reconnecting", timeout=30)
        time.sleep(0.5)
        server.start()
        client = redis.Redis.from_url(server.url)
        for bars in all_series:
            publish(client, bars.slice(6_000, None))
        wait_all_acked(client, symbols, "1m", within=90)
        assert daemon.proc is not None and daemon.proc.poll() is None  # it stayed up
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
        summary, rows = stored_rows(tmp_path / "data")
        assert rows == expected_rows(all_series)
        assert summary == 20_000
        assert dlq(client) == []
    finally:
        daemon.kill()
        server.cleanup()
