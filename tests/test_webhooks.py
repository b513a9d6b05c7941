"""Webhooks of the lifecycle events against real receivers on 127.0.0.1 and
a real Redis: each event reaches each URL once with a valid signature, also
across a restart of the daemon; a retried delivery keeps its id; a refusal,
a closed port or a receiver that never answers ends in
``quantum:webhooks:dlq`` with a reason, while ingest and inference go on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from quantum_daemon.domain.config import Config, RedisConfig, WebhooksConfig
from quantum_daemon.domain.config_schema import Secret
from quantum_daemon.domain.events import Event, make_event
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.secrets import Redactor
from quantum_daemon.push import WebhookService
from quantum_daemon.storage.events import publish_sync
from quantum_daemon_dev.redis_server import free_port
from tests.conftest import make_bars
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.ingest_helpers import publish
from tests.webhook_receiver import Receiver

KEYS = Keys()
SECRET = "whsec-test-0123456789abcdef"


def lifecycle_event(k: int, type_: str = "model.promoted") -> Event:
    return make_event(
        type_,
        model_id="xgb_HOOKUSDT_1h",
        family="xgb",
        symbol="HOOKUSDT",
        tf="1h",
        version=f"v20240101_{k:06d}",
        at=datetime(2024, 1, 1, tzinfo=UTC),
        transition=f"t{k}",
        reason=f"test {k}",
    )


def groups_ready(client: redis.Redis, n: int) -> bool:
    try:
        return len(client.xinfo_groups(KEYS.events)) >= n
    except redis.ResponseError:
        return False  # no stream yet


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def dead_letters(client: redis.Redis) -> list[dict[str, str]]:
    return [dict(fields) for _, fields in client.xrange(KEYS.webhooks_dlq)]


def pending(client: redis.Redis) -> int:
    return sum(int(g["pending"]) for g in client.xinfo_groups(KEYS.events))


async def until(check: Callable[[], bool], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_service(redis_url: str, **webhooks: Any) -> AsyncIterator[WebhookService]:
    settings: dict[str, Any] = {"enabled": True, "secret": Secret(SECRET), "backoff_base_s": 0.01}
    cfg = Config(redis=RedisConfig(url=redis_url), webhooks=WebhooksConfig(**(settings | webhooks)))
    client = aioredis.Redis.from_url(redis_url)
    admin = redis.Redis.from_url(redis_url)
    async with WebhookService(cfg, client, CollectorRegistry(), Redactor([SECRET])) as service:
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await until(lambda: groups_ready(admin, len(cfg.webhooks.urls)))
        try:
            yield service
        finally:
            stop.set()
            await task
    admin.close()
    await client.aclose()


def test_a_retried_delivery_keeps_its_id_and_each_attempt_is_signed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    with Receiver(SECRET, answers=(503, 500, 200)) as receiver:

        async def scenario() -> dict[str, Any]:
            async with running_service(redis_url, urls=(receiver.url,), retries=3) as service:
                publish_sync(redis.Redis.from_url(redis_url), KEYS, lifecycle_event(1))
                totals = service.targets[0].totals
                await until(lambda: totals.delivered == 1 and totals.in_flight == 0)
                return service.status()

        status = asyncio.run(scenario())
    got = receiver.received
    assert len(got) == 3
    assert all(r.signature_ok for r in got)
    assert len({r.headers["X-Quantum-Delivery"] for r in got}) == 1
    assert len({r.body for r in got}) == 1
    body = got[0].json
    assert body["type"] == "model.promoted" and body["data"]["reason"] == "test 1"
    assert body["event_id"] == lifecycle_event(1).event_id
    assert got[0].headers["X-Quantum-Event"] == "model.promoted"
    assert status["targets"][0] | {"url": None, "group": None} == {
        "url": None, "group": None, "delivered": 1, "filtered": 0, "dead_lettered": 0,
        "retried": 2, "last_error": "", "in_flight": 0,
    }  # fmt: skip
    assert pending(redis_client) == 0
    assert dead_letters(redis_client) == []


def test_refused_filtered_and_unreadable_entries(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A 4xx is not retried: dead-lettered after one attempt; a type outside
    ``event_types`` is acknowledged unsent; an entry that is not an event is
    dead-lettered as such. Nothing stays pending."""
    with Receiver(SECRET, answers=(400,)) as receiver:

        async def scenario() -> None:
            async with running_service(
                redis_url, urls=(receiver.url,), event_types=("model.",), retries=4
            ) as service:
                sync = redis.Redis.from_url(redis_url)
                publish_sync(sync, KEYS, lifecycle_event(1, "control.applied"))
                publish_sync(sync, KEYS, lifecycle_event(2, "model.retired"))
                sync.xadd(KEYS.events, {"garbage": "1"})
                sync.close()
                target = service.targets[0]
                await until(lambda: target.totals.dead_lettered == 2)
                await until(lambda: target.totals.filtered == 1)

        asyncio.run(scenario())
    assert [r.json["type"] for r in receiver.received] == ["model.retired"]
    letters = sorted(dead_letters(redis_client), key=lambda d: d["type"], reverse=True)
    assert [(d["type"], d["attempts"]) for d in letters] == [("model.retired", "1"), ("", "0")]
    assert letters[0]["reason"] == "http 400 (not retried)"
    assert letters[0]["event_id"] == lifecycle_event(2, "model.retired").event_id
    assert letters[0]["url"] == receiver.url
    assert letters[1]["reason"].startswith("unreadable event entry")
    assert pending(redis_client) == 0


WEBHOOK_CONFIG = """
[ingest]
symbols = ["HOOKUSDT"]
timeframes = ["1h"]
block_ms = 50
[models]
symbols = ["BTCUSDT"]
families = ["evo_model"]
[webhooks]
enabled = true
urls = {urls}
timeout_s = {timeout_s}
retries = {retries}
backoff_base_s = 0.05
backoff_max_s = 0.2
max_in_flight = 4
"""


def hook_config(tmp_path: Path, redis_url: str, urls: list[str], **knobs: Any) -> Path:
    settings = {"timeout_s": 5.0, "retries": 3} | knobs
    extra = WEBHOOK_CONFIG.format(urls=json.dumps(urls), **settings)
    return write_config(tmp_path / "config.toml", redis_url, tmp_path / "data", api_port(), extra)


def test_each_event_reaches_the_receiver_once_signed_also_across_a_restart(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    env = {"QUANTUM_WEBHOOK_SECRET": SECRET}
    with Receiver(SECRET) as receiver:
        config = hook_config(tmp_path, redis_url, [receiver.url])
        daemon = DaemonProcess(config, env=env).start()
        try:
            daemon.wait_for("daemon.ready", timeout=60)
            wait_until(lambda: groups_ready(redis_client, 1), 20, "the webhook group")
            for k in range(10):
                publish_sync(redis_client, KEYS, lifecycle_event(k))
            receiver.wait_for(10)
            daemon.send(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
            for k in range(10, 15):  # while no daemon runs
                publish_sync(redis_client, KEYS, lifecycle_event(k))
            daemon = DaemonProcess(config, env=env).start()
            daemon.wait_for("daemon.ready", timeout=60)
            receiver.wait_for(15)
            time.sleep(1.0)  # a double would arrive now
            wait_until(lambda: pending(redis_client) == 0, 10, "every entry acknowledged")
            daemon.send(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
        finally:
            daemon.kill()
    got = receiver.received
    expected = [lifecycle_event(k).event_id for k in range(15)]
    assert sorted(r.json["event_id"] for r in got) == sorted(expected)
    assert all(r.signature_ok for r in got)
    assert len({r.headers["X-Quantum-Delivery"] for r in got}) == 15
    assert all(abs(int(r.headers["X-Quantum-Timestamp"]) - time.time()) < 600 for r in got)
    assert SECRET not in "".join(daemon.raw_lines)


def test_dead_receivers_end_in_the_dead_letter_stream_while_ingest_goes_on(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """One URL's port is closed, the other accepts and never answers; three
    events each. While their deliveries hang, bars are stored and their
    signals published; after the retries every delivery is a dead letter
    with its reason and attempt count."""
    closed = f"http://127.0.0.1:{free_port()}/hook"
    with Receiver(SECRET, hang=True) as silent:
        config = hook_config(tmp_path, redis_url, [closed, silent.url], timeout_s=3.0, retries=2)
        daemon = DaemonProcess(config, env={"QUANTUM_WEBHOOK_SECRET": SECRET}).start()
        try:
            daemon.wait_for("daemon.ready", timeout=60)
            wait_until(lambda: groups_ready(redis_client, 2), 20, "the webhook groups")
            for k in range(3):
                publish_sync(redis_client, KEYS, lifecycle_event(k))
            silent.wait_for(3)  # three requests hang now
            bars = make_bars(6, symbol="HOOKUSDT")
            signals = KEYS.signals("HOOKUSDT", "1h")
            for k in range(6):
                publish(redis_client, bars.slice(k, k + 1))
                wait_until(lambda k=k: redis_client.xlen(signals) == k + 1, 20, f"signal {k}")
            hung = [d for d in dead_letters(redis_client) if d["url"] == silent.url]
            wait_until(lambda: len(dead_letters(redis_client)) == 6, 60, "six dead letters")
            daemon.send(signal.SIGTERM)
            assert daemon.wait(timeout=30) == 0
        finally:
            daemon.kill()
    assert hung == []  # ingest and inference did not wait for the hanging deliveries
    letters = dead_letters(redis_client)
    by_url = {url: [d for d in letters if d["url"] == url] for url in (closed, silent.url)}
    assert all(d["attempts"] == "3" for d in letters)
    assert {d["reason"] for d in by_url[silent.url]} == {"timed out after 3s"}
    assert all("connect" in d["reason"].lower() for d in by_url[closed]), by_url[closed]
    events = {lifecycle_event(k).event_id for k in range(3)}
    assert {d["event_id"] for d in by_url[closed]} == events == {
        d["event_id"] for d in by_url[silent.url]
    }
    assert len(silent.received) == 9  # three attempts of each of three events
    assert pending(redis_client) == 0
