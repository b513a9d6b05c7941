"""The ingest service: bar streams -> bar store, acknowledged after commit.

One reader task reads batches (``XREADGROUP ... COUNT batch_size BLOCK
block_ms``) and hands each to the store's single writer thread; one acker
task waits for each batch's commit, then writes its dead letters and its
``XACK`` in one ``MULTI``. A semaphore of ``max_in_flight`` slots is taken
before a read and given back after the ack, so when the store is slow the
reader reads less instead of buffering.

Start-up (``prepare``) is recovery: ensure the groups, take over the pending
entries of dead consumers of this host, re-read this consumer's own pending
entries, and ``XAUTOCLAIM`` entries that other consumers left idle for
``claim_idle_ms`` (also done periodically while running). Every store write is
idempotent (a re-delivered bar is a no-op), so at-least-once delivery stores
every bar exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.batch import BatchOutcome, BatchProcessor, ReadBatch, StreamEntries
from quantum_daemon.ingest.decode import Series
from quantum_daemon.ingest.ledger import IngestTotals, Ledger
from quantum_daemon.ingest.metrics import IngestMetrics
from quantum_daemon.ingest.streams import (
    claim_from_dead_local_consumers,
    configured_streams,
    consumer_name,
    discover_streams,
    ensure_group,
    group_state,
)
from quantum_daemon.ingest.wire import execute_transaction, finish_commands, raw_reads
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.bar_store import BarStore

log = get_logger()

T = TypeVar("T")
DLQ_MAXLEN = 100_000
HOUSEKEEPING_S = 1.0
PROGRESS_LOG_S = 10.0
TRANSIENT_REDIS = (RedisError, OSError)
# Called on the event loop after a batch was committed and acknowledged, once
# per series that got new bars: (symbol, tf, bars inserted). Inference and the
# lifecycle hang here; a hook must be quick and must not raise.
BarsStoredHook = Callable[[str, str, int], None]


@dataclass
class _InFlight:
    batch: ReadBatch
    outcome: asyncio.Future[BatchOutcome]


@dataclass
class _Schedule:
    """When the periodic chores are next due (monotonic seconds)."""

    discover: float = 0.0
    claim: float = 0.0
    progress: float = 0.0
    pending_lag: dict[str, tuple[int | None, int]] = field(default_factory=dict)


class IngestService:
    """Reads the bar streams into the store. Use as an async context manager
    (it owns the store's writer thread): ``prepare()``, then ``run(stop)``."""

    def __init__(
        self,
        config: Config,
        redis: aioredis.Redis,
        store: BarStore,
        metrics: IngestMetrics,
        consumer: str | None = None,
    ) -> None:
        self.cfg = config.ingest
        self.reconnect_max_s = config.redis.reconnect_max_s
        self.keys = Keys(config.redis.prefix)
        self.redis = redis
        self._raw = raw_reads(redis)
        self.store = store
        self.metrics = metrics
        self.consumer = consumer or consumer_name()
        self.streams: dict[bytes, Series] = {}
        self.ledger = Ledger(metrics)
        self.totals: IngestTotals = self.ledger.totals
        self.prepared = False
        self._processor = BatchProcessor(store, self.cfg.max_entry_bytes)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bar-store")
        self._pending_cursors: dict[bytes, bytes] = {}
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._schedule = _Schedule()
        self.on_stored: list[BarsStoredHook] = []

    async def __aenter__(self) -> IngestService:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Wait for the writer thread to finish its transaction, then stop it."""
        self._writer.shutdown(wait=True)

    # -- start-up: recovery --------------------------------------------------

    async def prepare(self) -> None:
        """Ensure the groups, then recover: entries of dead local consumers,
        this consumer's pending entries, and stale entries of others."""
        await self._in_writer(self._processor.seed)
        await self.refresh_streams()
        for stream in list(self.streams):
            await claim_from_dead_local_consumers(
                self.redis, stream, self.cfg.group, self.consumer, self.cfg.batch_size
            )
        await self.claim_stale()
        await self._recover_pending()
        self.prepared = True
        log.info(
            "ingest.prepared",
            streams=len(self.streams),
            consumer=self.consumer,
            claimed=self.totals.claimed,
        )

    async def refresh_streams(self) -> None:
        """Configured streams, plus existing bar streams when ``discover``;
        groups created where missing."""
        wanted = configured_streams(self.cfg, self.keys)
        if self.cfg.discover:
            wanted.update(await discover_streams(self.redis, self.keys))
        for stream, series in wanted.items():
            if stream not in self.streams and await ensure_group(
                self.redis, stream, self.cfg.group
            ):
                self.streams[stream] = series
                log.info(
                    "ingest.stream_added",
                    stream=stream.decode(),
                    symbol=series.symbol,
                    tf=series.tf,
                )

    async def _recreate_groups(self) -> None:
        """After a stream or its group vanished (deleted, or Redis lost its
        data): create them again; re-reading from the start is harmless."""
        for stream in list(self.streams):
            if not await ensure_group(self.redis, stream, self.cfg.group):
                del self.streams[stream]

    async def _recover_pending(self) -> None:
        self._pending_cursors = dict.fromkeys(self.streams, b"0")
        while (batch := await self._read_pending()) is not None:
            self._count_claimed(batch.size)
            await self._handle(batch)

    async def claim_stale(self) -> int:
        """Move entries that other consumers left pending for ``claim_idle_ms``
        into our pending list (ids only: the pending pass delivers them)."""
        claimed = 0
        for stream in list(self.streams):
            while True:
                ids = await self.redis.xautoclaim(
                    stream,
                    self.cfg.group,
                    self.consumer,
                    self.cfg.claim_idle_ms,
                    "0-0",
                    count=self.cfg.batch_size,
                    justid=True,
                )
                claimed += len(ids)
                if len(ids) < self.cfg.batch_size:
                    break
        if claimed:
            log.info("ingest.claimed", entries=claimed)
        return claimed

    # -- the loops -----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set; then finish the batches in flight
        (stored and acknowledged) and return."""
        if not await self._prepare_until_done(stop):
            return
        queue: asyncio.Queue[_InFlight | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.cfg.max_in_flight)
        self._schedule = _Schedule(claim=time.monotonic() + self.cfg.claim_idle_ms / 1000)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._ack_loop(queue, slots), name="ingest-ack")
            tg.create_task(self._housekeeping(stop), name="ingest-housekeeping")
            try:
                await self._read_loop(stop, queue, slots)
            finally:
                queue.put_nowait(None)
        log.info("ingest.stopped", **vars(self.totals))

    async def run_until_idle(self) -> IngestTotals:
        """Deterministic mode for tests: prepare if needed, then read, store
        and acknowledge batch by batch until nothing new is left."""
        if not self.prepared:
            await self.prepare()
        while (batch := await self._read_new(block_ms=None)) is not None:
            await self._handle(batch)
        return self.totals

    async def _prepare_until_done(self, stop: asyncio.Event) -> bool:
        backoff = Backoff(cap=self.reconnect_max_s)
        while not self.prepared and not stop.is_set():
            try:
                await self.prepare()
            except TRANSIENT_REDIS as exc:
                await self._redis_trouble(exc, backoff, stop)
        return self.prepared

    async def _read_loop(
        self, stop: asyncio.Event, queue: asyncio.Queue[_InFlight | None], slots: asyncio.Semaphore
    ) -> None:
        backoff = Backoff(cap=self.reconnect_max_s)
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            await slots.acquire()
            if stop.is_set():
                slots.release()
                return
            try:
                batch = await self._next_batch(stop)
            except TRANSIENT_REDIS as exc:
                slots.release()
                await self._redis_trouble(exc, backoff, stop)
                # A reply lost with the connection leaves entries in our
                # pending list: re-read it once the batches in flight are done.
                self._pending_cursors = dict.fromkeys(self.streams, b"0")
                continue
            if batch is None:
                slots.release()
                continue
            backoff.reset()
            self._set_in_flight(+1)
            outcome = loop.run_in_executor(self._writer, self._processor.process, batch)
            queue.put_nowait(_InFlight(batch, outcome))

    async def _next_batch(self, stop: asyncio.Event) -> ReadBatch | None:
        if self._pending_cursors:
            await self._drained.wait()  # never re-read entries that are still in flight
            batch = await self._read_pending()
            if batch is not None:
                self._count_claimed(batch.size)
                return batch
        if time.monotonic() >= self._schedule.claim:
            self._schedule.claim = time.monotonic() + self.cfg.claim_idle_ms / 1000
            if await self.claim_stale():
                self._pending_cursors = dict.fromkeys(self.streams, b"0")
                return None
        if not self.streams:
            await sleep_or_stop(stop, self.cfg.block_ms / 1000)
            return None
        return await self._read_new(self.cfg.block_ms)

    async def _ack_loop(
        self, queue: asyncio.Queue[_InFlight | None], slots: asyncio.Semaphore
    ) -> None:
        while (item := await queue.get()) is not None:
            outcome = await self._outcome_of(item)
            await self._retry_redis(functools.partial(self._finish, outcome))
            self._record(item.batch, outcome)
            self._set_in_flight(-1)
            slots.release()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        now = time.monotonic()
        self._schedule.discover = now + self.cfg.discover_interval_s
        self._schedule.progress = now + PROGRESS_LOG_S
        while not await sleep_or_stop(stop, HOUSEKEEPING_S):
            with contextlib.suppress(*TRANSIENT_REDIS):
                await self._chores()

    async def _chores(self) -> None:
        now = time.monotonic()
        if self.cfg.discover and now >= self._schedule.discover:
            self._schedule.discover = now + self.cfg.discover_interval_s
            await self.refresh_streams()
        if now >= self._schedule.progress:
            self._schedule.progress = now + PROGRESS_LOG_S
            self.ledger.log_progress(PROGRESS_LOG_S)
        await self.refresh_lag()

    # -- reading -------------------------------------------------------------

    async def _read_new(self, block_ms: int | None) -> ReadBatch | None:
        if not self.streams:
            return None
        streams: dict[Any, Any] = dict.fromkeys(self.streams, b">")
        reply = await self._raw.xreadgroup(
            self.cfg.group,
            self.consumer,
            streams,
            count=self.cfg.batch_size,
            block=block_ms,
        )
        return self._batch_of(reply, "new")

    async def _read_pending(self) -> ReadBatch | None:
        """The next entries of this consumer's pending list, one batch at a
        time; clears the cursors when every stream is done."""
        if not self._pending_cursors:
            return None
        cursors: dict[Any, Any] = dict(self._pending_cursors)
        reply = await self._raw.xreadgroup(
            self.cfg.group, self.consumer, cursors, count=self.cfg.batch_size
        )
        batch = self._batch_of(reply, "pending")
        done = set(self._pending_cursors)
        for part in batch.parts if batch else ():
            self._pending_cursors[part.stream] = part.entries[-1][0]
            done.discard(part.stream)
        for stream in done:
            del self._pending_cursors[stream]
        return batch

    def _batch_of(self, reply: Any, source: str) -> ReadBatch | None:
        """A batch of a raw XREADGROUP reply: [[stream, [[id, [name, value,
        ...]], ...]], ...] (RESP2) or {stream: [...]} (RESP3)."""
        items = reply.items() if isinstance(reply, dict) else reply or ()
        parts = [
            StreamEntries(stream, self.streams[stream], entries)
            for stream, entries in items
            if entries and stream in self.streams
        ]
        return ReadBatch(parts, source, time.monotonic()) if parts else None

    # -- storing and acknowledging ---------------------------------------------

    async def _handle(self, batch: ReadBatch) -> BatchOutcome:
        """Store one batch and acknowledge it (sequentially: recovery, tests)."""
        outcome = await self._in_writer(self._processor.process, batch)
        await self._finish(outcome)
        self._record(batch, outcome)
        return outcome

    async def _outcome_of(self, item: _InFlight) -> BatchOutcome:
        """The batch's outcome; a failed store transaction (nothing was
        committed) is retried with backoff."""
        backoff = Backoff(cap=self.reconnect_max_s)
        future = item.outcome
        while True:
            try:
                return await future
            except sqlite3.OperationalError as exc:
                delay = backoff.next_delay()
                self.metrics.store_retries.inc()
                log.warning("store.retrying", error=str(exc), retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
                future = asyncio.get_running_loop().run_in_executor(
                    self._writer, self._processor.process, item.batch
                )

    async def _finish(self, outcome: BatchOutcome) -> None:
        """Dead letters and acknowledgements of a committed batch, atomically."""
        commands = finish_commands(outcome, self.keys.dlq, DLQ_MAXLEN, self.cfg.group)
        await execute_transaction(self.redis, commands)

    async def _retry_redis(self, action: Callable[[], Awaitable[T]]) -> T:
        backoff = Backoff(cap=self.reconnect_max_s)
        while True:
            try:
                return await action()
            except TRANSIENT_REDIS as exc:
                await self._redis_trouble(exc, backoff, None)

    async def _redis_trouble(
        self, exc: BaseException, backoff: Backoff, stop: asyncio.Event | None
    ) -> None:
        """Log and wait before retrying; a group lost with Redis' data is recreated."""
        self.metrics.redis_errors.inc()
        if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
            log.warning("ingest.group_missing", error=str(exc))
            with contextlib.suppress(*TRANSIENT_REDIS):
                await self._recreate_groups()
                return
        delay = backoff.next_delay()
        log.warning(
            "redis.reconnecting", error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 3)
        )
        if stop is None:
            await asyncio.sleep(delay)
        else:
            await sleep_or_stop(stop, delay)

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    # -- bookkeeping ----------------------------------------------------------

    def _set_in_flight(self, delta: int) -> None:
        self._in_flight += delta
        self.metrics.in_flight.set(self._in_flight)
        if self._in_flight == 0:
            self._drained.set()
        else:
            self._drained.clear()

    def _count_claimed(self, n: int) -> None:
        self.ledger.count_claimed(n)

    def _record(self, batch: ReadBatch, outcome: BatchOutcome) -> None:
        for (symbol, tf), n in outcome.inserted.items():
            for hook in self.on_stored:
                self._notify(hook, symbol, tf, n)
        self.ledger.record(batch, outcome)

    def _notify(self, hook: BarsStoredHook, symbol: str, tf: str, n: int) -> None:
        """A listener's failure is its own: the bars are stored and acked,
        and ingest goes on."""
        try:
            hook(symbol, tf, n)
        except Exception as exc:
            log.error("ingest.hook_failed", hook=repr(hook), symbol=symbol, tf=tf, error=repr(exc))

    # -- lag -----------------------------------------------------------------

    async def refresh_lag(self) -> dict[str, tuple[int | None, int]]:
        """(lag, pending) of the group on every stream; lag is None when
        Redis cannot tell (after deletions)."""
        result: dict[str, tuple[int | None, int]] = {}
        for stream in list(self.streams):
            state = await group_state(self.redis, stream, self.cfg.group)
            if state is not None:
                name, (lag, pending) = stream.decode(), state
                result[name] = state
                self.metrics.lag.labels(name).set(lag if lag is not None else -1)
                self.metrics.pending.labels(name).set(pending)
        self._schedule.pending_lag = result
        return result

    def status(self) -> dict[str, Any]:
        """The ingest section of ``/api/status``."""
        return {
            "consumer": self.consumer,
            "group": self.cfg.group,
            "streams": {
                s: {"lag": lag, "pending": pending}
                for s, (lag, pending) in self._schedule.pending_lag.items()
            },
            "in_flight_batches": self._in_flight,
            "totals": vars(self.totals).copy(),
        }
