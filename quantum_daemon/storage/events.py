"""Lifecycle events on ``quantum:events`` (DESIGN §5), published exactly once.

An entry has two fields: ``type`` (``model.promoted``, ...) and ``data``, a
JSON object holding ``event_id``, ``model_id``, ``family``, ``symbol``,
``tf``, ``version``, ``timestamp`` (ISO 8601, UTC, when it happened) and the
event's own fields. The stream is trimmed (``MAXLEN ~``). The event values
themselves (``Event``, ``make_event``, the types) are ``domain.events``;
they are re-exported here for the publishing side.

Exactly once: every event has an id derived from what it records (type,
model, version, and the transition or job), and is published by a Lua
script that adds it only if its dedup key (``{events}:seen:{digest}``, with a
TTL) was not set yet, atomically. Registry events are first written to the
model's durable outbox in the same atomic write as the transition itself
(``registry.py``); ``OutboxFlusher`` publishes the outbox and confirms what
went out. A crash between publishing and confirming re-publishes on start,
which the dedup key turns into a no-op; Redis down leaves events in the
outbox until it returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from quantum_daemon.domain.events import (
    CONTROL_APPLIED,
    CONTROL_REJECTED,
    MODEL_EVALUATED,
    MODEL_LOAD_REFUSED,
    MODEL_PROMOTED,
    MODEL_REGISTERED,
    MODEL_REJECTED,
    MODEL_RETIRED,
    TRAINING_COMPLETED,
    TRAINING_FAILED,
    TRAINING_STARTED,
    Event,
    make_event,
)
from quantum_daemon.domain.keys import Keys
from quantum_daemon.runtime.aio import sleep_or_stop, wait_first
from quantum_daemon.runtime.logs import get_logger

__all__ = [
    "CONTROL_APPLIED",
    "CONTROL_REJECTED",
    "MODEL_EVALUATED",
    "MODEL_LOAD_REFUSED",
    "MODEL_PROMOTED",
    "MODEL_REGISTERED",
    "MODEL_REJECTED",
    "MODEL_RETIRED",
    "TRAINING_COMPLETED",
    "TRAINING_FAILED",
    "TRAINING_STARTED",
    "Event",
    "EventPublisher",
    "OutboxFlusher",
    "OutboxStore",
    "dedup_key",
    "make_event",
    "parse_entry",
    "publish_sync",
]

log = get_logger()

EVENTS_MAXLEN = 10_000
DEDUP_TTL_S = 7 * 24 * 3600
FINAL_FLUSH_S = 2.0

# KEYS[1] stream, KEYS[2] dedup key; ARGV: ttl, maxlen, type, data.
_PUBLISH_ONCE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'type', ARGV[3], 'data', ARGV[4])
end
return false
"""


def dedup_key(keys: Keys, event_id: str) -> str:
    digest = hashlib.sha256(event_id.encode()).hexdigest()[:32]
    return f"{keys.events}:seen:{digest}"


def parse_entry(fields: Mapping[Any, Any]) -> Event:
    """An event from a stream entry's fields (bytes or str)."""
    get = {_text(k): _text(v) for k, v in fields.items()}
    return Event(get["type"], json.loads(get["data"]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EventPublisher:
    """Publishes events once each, on the daemon's asyncio client."""

    def __init__(self, client: aioredis.Redis, keys: Keys, maxlen: int = EVENTS_MAXLEN) -> None:
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        self._script = client.register_script(_PUBLISH_ONCE)

    async def publish(self, event: Event) -> bool:
        """True when added now, False when it had been published before."""
        added = await self._script(
            keys=[self.keys.events, dedup_key(self.keys, event.event_id)],
            args=[DEDUP_TTL_S, self.maxlen, event.type, event.fields()["data"]],
        )
        return added is not None


def publish_sync(
    client: redis.Redis, keys: Keys, event: Event, maxlen: int = EVENTS_MAXLEN
) -> bool:
    """``EventPublisher.publish`` for synchronous callers (the CLI)."""
    added = client.eval(
        _PUBLISH_ONCE,
        2,
        keys.events,
        dedup_key(keys, event.event_id),
        DEDUP_TTL_S,
        maxlen,
        event.type,
        event.fields()["data"],
    )
    return added is not None


class OutboxStore(Protocol):
    """Where unpublished events wait (the registry's per-model state files)."""

    def pending_events(self) -> list[Event]: ...

    def confirm_events(self, model_id: str, event_ids: Sequence[str]) -> None: ...


class OutboxFlusher:
    """Publishes the outbox in order, confirms what went out; on a Redis
    error it stops and leaves the rest for the next flush."""

    def __init__(self, store: OutboxStore, publisher: EventPublisher, interval_s: float = 2.0):
        self.store = store
        self.publisher = publisher
        self.interval_s = interval_s
        self.published = 0
        self.backlog = 0
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def flush(self) -> int:
        """Publish what waits; return how many events were confirmed."""
        pending = await asyncio.to_thread(self.store.pending_events)
        done: dict[str, list[str]] = {}
        try:
            for event in pending:
                await self.publisher.publish(event)
                done.setdefault(event.model_id or "", []).append(event.event_id)
        except (RedisError, OSError) as exc:
            log.warning("events.flush_failed", error=str(exc), waiting=len(pending))
        for model_id, ids in done.items():
            await asyncio.to_thread(self.store.confirm_events, model_id, ids)
        confirmed = sum(len(ids) for ids in done.values())
        self.published += confirmed
        self.backlog = len(pending) - confirmed
        return confirmed

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.flush()
                if self.backlog:
                    await sleep_or_stop(stop, self.interval_s)
                else:
                    await self._sleep(stop)
        finally:
            await self._last_flush()

    async def _last_flush(self) -> None:
        """Stopping or cancelled (a sibling loop crashed): publish what waits,
        briefly; whatever does not go out stays in the outbox for the next start."""
        flush = asyncio.ensure_future(self.flush())
        try:
            await asyncio.wait({flush}, timeout=FINAL_FLUSH_S)
        except asyncio.CancelledError:
            # cancelled during the last flush (the scheduler crashed while it
            # ran): the flush still gets its time, else the loop's end kills it
            await asyncio.wait({flush}, timeout=FINAL_FLUSH_S)
            raise
        if flush.done():
            flush.result()  # the flush's own failure is raised, as from any flush

    async def _sleep(self, stop: asyncio.Event) -> None:
        await wait_first(self._wakeup, stop, timeout_s=30.0)
        self._wakeup.clear()
