"""Recovery: entries read but never acknowledged (by us before a restart, by
a consumer that died, by one that stalls elsewhere) end up stored exactly
once; a slow store makes the consumer read less; stop acks what was stored;
a Redis restart in the middle loses nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from quantum_daemon.storage.bar_store import Bar, BarStore, InsertResult
from quantum_daemon_dev.redis_server import RedisServer
from tests.conftest import make_bars
from tests.ingest_helpers import (
    GROUP,
    KEYS,
    dlq,
    group_state,
    ingest_service,
    make_config,
    publish,
    wait_until,
)

BTC = KEYS.bars("BTCUSDT", "1h")

# A consumer that reads entries and is killed before it acknowledges them.
DYING_CONSUMER = """
import os, signal, socket, sys
import redis
r = redis.Redis.from_url(sys.argv[1])
r.xreadgroup(sys.argv[3], f"{socket.gethostname()}-{os.getpid()}", {sys.argv[2]: ">"}, count=60)
print(os.getpid(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def create_group(r: redis.Redis, stream: str) -> None:
    r.xgroup_create(stream, GROUP, id="0", mkstream=True)


def consumers(r: redis.Redis, stream: str) -> dict[str, int]:
    return {c["name"].decode(): c["pending"] for c in r.xinfo_consumers(stream, GROUP)}


async def prepare(config, store, consumer=None) -> int:
    async with ingest_service(config, store, consumer) as service:
        await service.prepare()
        return service.totals.claimed


def test_own_pending_entries_are_stored_at_start(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    publish(r, make_bars(100, symbol="BTCUSDT"))
    create_group(r, BTC)
    r.xreadgroup(GROUP, "me", {BTC: ">"}, count=40)  # read, then "crashed" before storing
    with BarStore.in_dir(tmp_path) as store:
        claimed = asyncio.run(prepare(make_config(redis_url), store, consumer="me"))
        assert (claimed, store.count()) == (40, 40)
    assert group_state(r, BTC) == (60, 0)


def test_a_dead_consumer_of_this_host_is_taken_over_at_once(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    publish(r, make_bars(100, symbol="BTCUSDT"))
    create_group(r, BTC)
    died = subprocess.run(
        [sys.executable, "-c", DYING_CONSUMER, redis_url, BTC, GROUP],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert died.returncode == -signal.SIGKILL
    assert sum(consumers(r, BTC).values()) == 60
    config = make_config(redis_url, claim_idle_ms=3_600_000)  # idle time plays no part
    with BarStore.in_dir(tmp_path) as store:
        assert asyncio.run(prepare(config, store)) == 60
        assert store.count() == 60
    assert not any(name.endswith(f"-{died.stdout.strip()}") for name in consumers(r, BTC))
    assert group_state(r, BTC) == (40, 0)


def test_stale_entries_of_a_consumer_elsewhere_are_claimed(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    publish(r, make_bars(100, symbol="BTCUSDT"))
    create_group(r, BTC)
    r.xreadgroup(GROUP, "otherhost-1", {BTC: ">"}, count=70)
    with BarStore.in_dir(tmp_path) as store:
        patient = make_config(redis_url, claim_idle_ms=3_600_000)
        assert asyncio.run(prepare(patient, store)) == 0  # not stale yet: left alone
        assert consumers(r, BTC)["otherhost-1"] == 70
        eager = make_config(redis_url, claim_idle_ms=1, batch_size=16)
        assert asyncio.run(prepare(eager, store)) == 70
        assert store.count() == 70
    assert group_state(r, BTC) == (30, 0)


def test_run_claims_entries_that_stall_elsewhere(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    create_group(r, BTC)
    bars = make_bars(50, symbol="BTCUSDT")
    config = make_config(redis_url, claim_idle_ms=200)

    async def scenario(store: BarStore) -> None:
        stop = asyncio.Event()
        async with ingest_service(config, store) as service:
            task = asyncio.create_task(service.run(stop))
            await wait_until(lambda: service.prepared)
            publish(r, bars)
            # A consumer on another host grabs everything and stalls.
            r.xreadgroup(GROUP, "otherhost-2", {BTC: ">"}, count=1000)
            await wait_until(lambda: store.count() == 50, what="claimed bars stored")
            stop.set()
            await asyncio.wait_for(task, 5)

    with BarStore.in_dir(tmp_path) as store:
        asyncio.run(scenario(store))
    assert group_state(r, BTC) == (0, 0)


class GatedStore(BarStore):
    """A store that waits for ``gate`` before each transaction: a slow disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()

    def insert_bars(self, bars: Sequence[Bar]) -> InsertResult:
        self.gate.wait(timeout=30)
        return super().insert_bars(bars)


def test_a_slow_store_makes_the_consumer_read_less(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    bars = make_bars(2_000, symbol="BTCUSDT")
    publish(r, bars)
    config = make_config(redis_url, batch_size=100, max_in_flight=3)

    async def scenario(store: GatedStore) -> None:
        stop = asyncio.Event()
        async with ingest_service(config, store) as service:
            task = asyncio.create_task(service.run(stop))
            await wait_until(lambda: service.status()["in_flight_batches"] == 3)
            await asyncio.sleep(0.3)  # several read periods: nothing more is read
            lag, pending = group_state(r, BTC)
            assert pending == 300 and lag == 1_700
            stop.set()  # stop while batches wait for the store ...
            store.gate.set()
            await asyncio.wait_for(task, 10)  # ... they are stored and acked first

    with GatedStore(tmp_path / "bars.sqlite3") as store:
        asyncio.run(scenario(store))
        assert store.count() == 300
    assert group_state(r, BTC) == (1_700, 0)


@pytest.mark.timeout(120)
def test_a_redis_restart_in_the_middle_loses_nothing(tmp_path: Path) -> None:
    server = RedisServer(appendonly=True).start()
    try:
        r = redis.Redis.from_url(server.url)
        all_bars = make_bars(6_000, symbol="BTCUSDT")
        first, second = all_bars.slice(0, 3_000), all_bars.slice(3_000, None)
        publish(r, first)
        config = make_config(server.url, batch_size=100)
        with BarStore.in_dir(tmp_path) as store, capture_logs() as logs:
            asyncio.run(restart_midway(server, store, config, second))
            assert store.count() == 6_000
            assert store.read_bars("BTCUSDT", "1h").close.tolist() == all_bars.close.tolist()
        assert any(e["event"] == "redis.reconnecting" for e in logs)
        r = redis.Redis.from_url(server.url)
        assert group_state(r, BTC) == (0, 0)
        assert dlq(r) == []
    finally:
        server.cleanup()


async def restart_midway(server: RedisServer, store: BarStore, config, second) -> None:
    stop = asyncio.Event()
    async with ingest_service(config, store) as service:
        task = asyncio.create_task(service.run(stop))
        await wait_until(lambda: store.count() > 500, what="ingest under way")
        await asyncio.to_thread(server.restart)
        publish(redis.Redis.from_url(server.url), second)
        await wait_until(lambda: store.count() == 6_000, within=60, what="all bars stored")
        stop.set()
        await asyncio.wait_for(task, 10)


def test_a_deleted_stream_and_group_are_recreated(redis_url: str, tmp_path: Path) -> None:
    r = redis.Redis.from_url(redis_url)
    bars = make_bars(200, symbol="BTCUSDT")
    config = make_config(redis_url)

    async def scenario(store: BarStore) -> None:
        stop = asyncio.Event()
        async with ingest_service(config, store) as service:
            task = asyncio.create_task(service.run(stop))
            publish(r, bars.slice(0, 100))
            await wait_until(lambda: store.count() == 100, what="first half stored")
            r.delete(BTC)  # an operator removed the stream, and its group with it
            publish(r, bars.slice(100, None))
            await wait_until(lambda: store.count() == 200, what="second half stored")
            stop.set()
            await asyncio.wait_for(task, 5)

    with BarStore.in_dir(tmp_path) as store, capture_logs() as logs:
        asyncio.run(scenario(store))
    assert any(e["event"] == "ingest.group_missing" for e in logs)
    assert group_state(r, BTC) == (0, 0)


def test_each_stale_entry_is_claimed_once_even_with_a_tiny_idle_time(
    redis_url: str, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_url)
    publish(r, make_bars(100, symbol="BTCUSDT"))
    create_group(r, BTC)
    r.xreadgroup(GROUP, "otherhost-1", {BTC: ">"}, count=70)
    eager = make_config(redis_url, claim_idle_ms=1, batch_size=16)

    async def claim(store: BarStore) -> int:
        async with ingest_service(eager, store) as service:
            await service.refresh_streams()
            await asyncio.sleep(0.01)  # the other consumer's entries are idle now
            return await service.claim_stale()

    with BarStore.in_dir(tmp_path) as store:
        assert asyncio.run(claim(store)) == 70  # one pass, not our own claims again
    holders = {p["consumer"] for p in r.xpending_range(BTC, GROUP, "-", "+", 100)}
    assert len(holders) == 1 and b"otherhost-1" not in holders  # all 70 now ours
