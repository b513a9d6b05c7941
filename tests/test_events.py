"""Lifecycle events on a real Redis: each published once (a re-emission after a
crash is a no-op), the stream trimmed, the outbox kept while Redis is down
and flushed when it returns."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import redis
import redis.asyncio as aioredis

from quantum_daemon.domain.events import Event, make_event
from quantum_daemon.domain.keys import Keys
from quantum_daemon.storage.events import EventPublisher, OutboxFlusher, parse_entry, publish_sync
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon_dev.redis_server import free_port

KEYS = Keys("quantum")
MODEL = "lgbm_ETHUSDT_1h"


def event(n: int, type: str = "training.started") -> Event:
    return make_event(
        type,
        model_id=MODEL,
        family="lgbm",
        symbol="ETHUSDT",
        tf="1h",
        version=f"v2024090{n % 10}_000000",
        at=datetime(2024, 9, 1, tzinfo=UTC),
        transition=f"job-{n}",
        job_id=f"job-{n}",
    )


def stream(client: redis.Redis) -> list[Event]:
    return [parse_entry(fields) for _, fields in client.xrange(KEYS.events)]


async def publish_all(url: str, events: list[Event], maxlen: int = 10_000) -> list[bool]:
    client = aioredis.Redis.from_url(url)
    try:
        publisher = EventPublisher(client, KEYS, maxlen=maxlen)
        return [await publisher.publish(e) for e in events]
    finally:
        await client.aclose()


def test_an_event_is_published_with_type_and_json_data(
    redis_url: str, redis_client: redis.Redis
) -> None:
    assert asyncio.run(publish_all(redis_url, [event(1)])) == [True]
    [got] = stream(redis_client)
    assert got == event(1)
    assert got.data["event_id"] == f"training.started|{MODEL}|v20240901_000000|job-1"
    assert got.data["timestamp"] == "2024-09-01T00:00:00+00:00"


def test_publishing_the_same_event_again_adds_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    assert asyncio.run(publish_all(redis_url, [event(1), event(1), event(2)])) == [
        True,
        False,
        True,
    ]
    sync_client = redis.Redis.from_url(redis_url)
    assert publish_sync(sync_client, KEYS, event(2)) is False
    sync_client.close()
    assert [e.data["job_id"] for e in stream(redis_client)] == ["job-1", "job-2"]


def test_the_events_stream_is_trimmed(redis_url: str, redis_client: redis.Redis) -> None:
    asyncio.run(publish_all(redis_url, [event(n) for n in range(300)], maxlen=20))
    assert redis_client.xlen(KEYS.events) < 300


def outbox_with_events(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path)
    registry.add_events(MODEL, [event(1), event(2, "training.completed")])
    return registry


async def flush(url: str, registry: Registry) -> int:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return await OutboxFlusher(registry, EventPublisher(client, KEYS)).flush()
    finally:
        await client.aclose()


def test_the_outbox_is_flushed_in_order_and_confirmed(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    registry = outbox_with_events(tmp_path)
    assert asyncio.run(flush(redis_url, registry)) == 2
    assert registry.pending_events() == []
    assert [e.type for e in stream(redis_client)] == ["training.started", "training.completed"]


def test_while_redis_is_down_events_stay_in_the_outbox(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    registry = outbox_with_events(tmp_path)
    assert asyncio.run(flush(f"redis://127.0.0.1:{free_port()}/0", registry)) == 0
    assert len(registry.pending_events()) == 2
    assert asyncio.run(flush(redis_url, registry)) == 2
    assert len(stream(redis_client)) == 2


def test_a_crash_between_publishing_and_confirming_emits_nothing_twice(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    registry = outbox_with_events(tmp_path)
    asyncio.run(publish_all(redis_url, registry.pending_events()))  # then "crash"
    assert asyncio.run(flush(redis_url, registry)) == 2  # re-emitted on restart
    assert len(stream(redis_client)) == 2
    assert registry.pending_events() == []


def test_the_flusher_loop_publishes_on_wake_and_flushes_at_stop(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    registry = Registry(tmp_path)

    async def main() -> None:
        client = aioredis.Redis.from_url(redis_url)
        flusher = OutboxFlusher(registry, EventPublisher(client, KEYS))
        stop = asyncio.Event()
        task = asyncio.create_task(flusher.run(stop))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(registry.add_events, MODEL, [event(1)])
        flusher.wake()
        for _ in range(100):
            if redis_client.xlen(KEYS.events):
                break
            await asyncio.sleep(0.02)
        await asyncio.to_thread(registry.add_events, MODEL, [event(2)])
        stop.set()
        await asyncio.wait_for(task, 5)
        await client.aclose()

    asyncio.run(main())
    assert [e.data["job_id"] for e in stream(redis_client)] == ["job-1", "job-2"]
