"""The deliveries to one webhook URL: a consumer group of its own on
``quantum:events``, so that each event goes to each URL once, across
restarts, and a slow URL holds back no other.

The reader takes at most as many entries as there are free delivery slots
(``max_in_flight``), hands each to a delivery task and reads on; a task
acknowledges its entry when the event was delivered, filtered out, or
dead-lettered (``quantum:webhooks:dlq``) after the retry budget. An entry
whose delivery was cut short by the stop stays pending: the next start
reads this consumer's pending list first (and claims the entries of dead
consumers of this host) and delivers it then, under the same delivery id.
The group is created at the stream's end: a URL gets the events published
after it was first configured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from quantum_daemon.domain.config import WebhooksConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.secrets import Redactor
from quantum_daemon.domain.webhooks import delivery_body, delivery_id, target_id, wanted
from quantum_daemon.push.delivery import Delivery, Outcome, Poster
from quantum_daemon.push.metrics import WebhookMetrics
from quantum_daemon.runtime.aio import sleep_or_stop, wait_first
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.consumers import claim_from_dead_local_consumers
from quantum_daemon.runtime.liveness import beat
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.events import parse_entry

log = get_logger()

BLOCK_MS = 500
CLAIM_CHUNK = 100


@dataclass
class TargetTotals:
    delivered: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    retried: int = 0
    last_error: str = ""
    in_flight: int = 0


@dataclass
class Target:
    """One URL's reader and its deliveries."""

    url: str
    cfg: WebhooksConfig
    client: aioredis.Redis
    keys: Keys
    consumer: str
    poster: Poster
    metrics: WebhookMetrics
    redact: Redactor
    totals: TargetTotals = field(default_factory=TargetTotals)

    def __post_init__(self) -> None:
        self.name = target_id(self.url)
        self.group = self.keys.webhook_group(self.name)
        self.shown_url = self.redact(self.url)
        self._taken = 0  # delivery slots handed out
        self._freed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``. A Redis error (reading, or a delivery's ack)
        cancels the deliveries under way, which stay pending, and serving
        starts over from this consumer's pending list after a backoff."""
        backoff = Backoff(cap=10.0)
        while not stop.is_set():
            try:
                async with asyncio.TaskGroup() as deliveries:
                    await self._serve(stop, deliveries)
            except* (RedisError, OSError) as group:
                delay = backoff.next_delay()
                log.warning("webhook.redis_error", url=self.shown_url,
                            error=str(group.exceptions[0]), retry_in_s=round(delay, 3))  # fmt: skip
                await sleep_or_stop(stop, delay)
            else:
                backoff.reset()

    async def _serve(self, stop: asyncio.Event, deliveries: asyncio.TaskGroup) -> None:
        self._taken = 0  # the last group's tasks are all done, some never started
        await self._ensure_group("$")
        await claim_from_dead_local_consumers(
            self.client, self.keys.events, self.group, self.consumer, CLAIM_CHUNK
        )
        cursor = "0"  # this consumer's pending list first, then new entries
        while not stop.is_set():
            free = await self._free_slots(stop)
            if free == 0:
                continue
            entries = await self._read(cursor, free)
            if cursor != ">" and not entries:
                cursor = ">"
                continue
            for entry_id, fields in entries:
                if cursor != ">":
                    cursor = entry_id
                self._taken += 1
                deliveries.create_task(
                    self._deliver(entry_id, fields, stop), name=f"webhook-{self.name}-{entry_id}"
                )

    async def _free_slots(self, stop: asyncio.Event) -> int:
        """How many delivery slots are free, waiting (beating) for one; 0 on stop."""
        while self._taken >= self.cfg.max_in_flight and not stop.is_set():
            self._freed.clear()
            await wait_first(self._freed, stop)
        return 0 if stop.is_set() else self.cfg.max_in_flight - self._taken

    async def _read(self, cursor: str, count: int) -> list[tuple[str, Mapping[Any, Any]]]:
        block = BLOCK_MS if cursor == ">" else None
        try:
            reply: Any = await self.client.xreadgroup(
                self.group, self.consumer, {self.keys.events: cursor}, count=count, block=block
            )
        except ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            log.warning("webhook.group_lost", url=self.shown_url)
            await self._ensure_group("0")  # the stream was deleted: all it holds is new
            return []
        beat()
        return [(_text(i), f or {}) for _, entries in reply or [] for i, f in entries]

    async def _ensure_group(self, start: str) -> None:
        try:
            await self.client.xgroup_create(self.keys.events, self.group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _deliver(self, entry_id: str, fields: Mapping[Any, Any], stop: asyncio.Event) -> None:
        self.totals.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            await self._handle(entry_id, fields, stop)
        finally:
            self.totals.in_flight -= 1
            self.metrics.in_flight.dec()
            self._taken -= 1
            self._freed.set()

    async def _handle(self, entry_id: str, fields: Mapping[Any, Any], stop: asyncio.Event) -> None:
        try:
            event = parse_entry(fields)
        except (KeyError, ValueError, TypeError) as exc:
            await self._dead_letter(entry_id, None, f"unreadable event entry: {exc!r}", 0)
            return
        if not wanted(event.type, self.cfg.event_types):
            self.totals.filtered += 1
            self.metrics.outcomes.labels("filtered").inc()
            await self._ack(entry_id)
            return
        delivery = Delivery(
            self.url,
            event.type,
            delivery_id(self.url, entry_id),
            delivery_body(event, entry_id, delivery_id(self.url, entry_id)),
        )
        outcome = await self.poster.deliver(delivery, stop)
        await self._settle(entry_id, event.type, event.data.get("event_id"), outcome)

    async def _settle(
        self, entry_id: str, event_type: str, event_id: Any, outcome: Outcome
    ) -> None:
        self.totals.retried += outcome.attempts - 1
        self.metrics.retries.inc(outcome.attempts - 1)
        if outcome.stopped:
            return  # stays pending: delivered after the restart
        if outcome.delivered:
            self.totals.delivered += 1
            self.metrics.outcomes.labels("delivered").inc()
            await self._ack(entry_id)
            return
        self.totals.last_error = self.redact(outcome.reason)
        await self._dead_letter(entry_id, (event_type, event_id), outcome.reason, outcome.attempts)

    async def _dead_letter(
        self, entry_id: str, event: tuple[str, Any] | None, reason: str, attempts: int
    ) -> None:
        event_type, event_id = event or ("", "")
        record = {
            "url": self.shown_url,
            "target": self.name,
            "stream_id": entry_id,
            "event_id": str(event_id or ""),
            "type": event_type,
            "delivery_id": delivery_id(self.url, entry_id),
            "reason": self.redact(reason),
            "attempts": str(attempts),
            "at": f"{time.time():.3f}",
        }
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.webhooks_dlq, record, maxlen=self.cfg.dlq_maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.xack(self.keys.events, self.group, entry_id)
            await pipe.execute()
        self.totals.dead_lettered += 1
        self.metrics.outcomes.labels("dead_lettered").inc()
        log.warning("webhook.dead_lettered", url=self.shown_url, stream_id=entry_id,
                    event_type=event_type, attempts=attempts, reason=record["reason"])  # fmt: skip

    async def _ack(self, entry_id: str) -> None:
        await self.client.xack(self.keys.events, self.group, entry_id)

    def status(self) -> dict[str, Any]:
        return {"url": self.shown_url, "group": self.group, **vars(self.totals)}


def _text(value: Any) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)
