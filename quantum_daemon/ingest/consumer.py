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

The reading and claiming is ``ingest.reading``, the commit path
``ingest.commit``, the choice of streams ``ingest.discovery``, the answer to
Redis errors ``ingest.retry``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.batch import BatchOutcome, ReadBatch
from quantum_daemon.ingest.commit import BatchCommitter, InFlight, InFlightCount
from quantum_daemon.ingest.decode import Series
from quantum_daemon.ingest.discovery import recreate_groups, refresh_streams
from quantum_daemon.ingest.ledger import IngestTotals, Ledger
from quantum_daemon.ingest.metrics import IngestMetrics
from quantum_daemon.ingest.reading import StreamReader
from quantum_daemon.ingest.retry import TRANSIENT_REDIS, RedisRetry
from quantum_daemon.ingest.streams import ensure_group, group_state, shown_name
from quantum_daemon.ingest.takeover import (
    claim_all_pending,
    history_batches,
    history_start,
    last_delivered,
    raw_ranges,
)
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.consumers import claim_from_dead_local_consumers, consumer_name
from quantum_daemon.runtime.liveness import beat
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.bar_store import BarStore

log = get_logger()

HOUSEKEEPING_S = 1.0
PROGRESS_LOG_S = 10.0
# Called on the event loop after a batch was committed and acknowledged, once
# per series that got new bars: (symbol, tf, bars inserted). Inference and the
# lifecycle hang here; a hook must be quick and must not raise.
BarsStoredHook = Callable[[str, str, int], None]


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
        owned_only: bool = False,
    ) -> None:
        self.cfg = config.ingest
        self.reconnect_max_s = config.redis.reconnect_max_s
        self.keys = Keys(config.redis.prefix)
        self.redis = redis
        self.store = store
        self.metrics = metrics
        self.consumer = consumer or consumer_name()
        self.streams: dict[bytes, Series] = {}  # the streams read
        # With series ownership (several daemons on one Redis) the streams
        # found are candidates, and only those this daemon owns are read.
        self.candidates: dict[bytes, Series] = {} if owned_only else self.streams
        self.refused_streams: dict[bytes, str] = {}  # name -> why discovery does not read it
        self.ledger = Ledger(metrics)
        self.totals: IngestTotals = self.ledger.totals
        self.prepared = False
        self._reader = StreamReader(redis, self.cfg, self.consumer, self.streams)
        self._ranges = raw_ranges(redis)
        self._committer = BatchCommitter(
            store, redis, self.cfg, self.keys, metrics, self.reconnect_max_s
        )
        self._in_flight = InFlightCount(metrics)
        self._retry = RedisRetry(metrics, self.reconnect_max_s, self._recreate_groups)
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
        self._committer.close()

    # -- start-up: recovery --------------------------------------------------

    async def prepare(self) -> None:
        """Ensure the groups, then recover: entries of dead local consumers,
        this consumer's pending entries, and stale entries of others."""
        await self._committer.in_writer(self._committer.processor.seed)
        await self.refresh_streams()
        await self._reader.claim_from_dead_local_consumers()
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
        await refresh_streams(
            self.redis, self.cfg, self.keys, self.candidates, self.refused_streams
        )

    # -- ownership (runtime.ownership, ingest.takeover) -----------------------

    def candidate_series(self) -> list[tuple[str, str]]:
        return [(s.symbol, s.tf) for s in self.candidates.values()]

    async def take_over(self, series: list[tuple[str, str]]) -> None:
        """Start reading series this daemon now owns: their history first,
        then every pending entry of the group, then new entries."""
        for symbol, tf in series:
            stream = self.keys.bars(symbol, tf).encode()
            found = self.candidates.get(stream) or Series.of(symbol, tf, self.cfg.max_future_s)
            if not await ensure_group(self.redis, stream, self.cfg.group):
                continue
            start, loaded = await self._load_history(symbol, tf, stream, found)
            # dead consumers of this host are removed (their entries taken),
            # then whatever any other consumer still has pending is taken
            await claim_from_dead_local_consumers(
                self.redis, stream, self.cfg.group, self.consumer, self.cfg.batch_size
            )
            claimed = await claim_all_pending(
                self._ranges, stream, self.cfg.group, self.consumer, self.cfg.batch_size
            )
            self.streams[stream] = found
            log.info(
                "ingest.took_over",
                symbol=symbol,
                tf=tf,
                history_from=start.decode(),
                history_inserted=loaded,
                claimed=claimed,
            )
        self._reader.reread_pending()

    async def _load_history(
        self, symbol: str, tf: str, stream: bytes, series: Series
    ) -> tuple[bytes, int]:
        """Store what the group delivered on ``stream`` so far (docs/scaling.md);
        (where the load started, bars inserted)."""
        end = await last_delivered(self.redis, stream, self.cfg.group)
        if end == b"0-0":
            return b"", 0  # nothing delivered yet: the group brings it all
        chunk, start = self.cfg.batch_size, b"-"  # an empty store: all, without a scan
        if (symbol, tf) in await self._committer.in_writer(self.store.last_ts):
            present = functools.partial(self._stored_among, symbol, tf)
            start = await history_start(self._ranges, stream, chunk, present, end)
        loaded = 0
        async for batch in history_batches(self._ranges, stream, series, chunk, start, end):
            outcome = await self._committer.store(batch)
            self._record(batch, outcome)
            loaded += sum(outcome.inserted.values())
        return start, loaded

    async def _stored_among(self, symbol: str, tf: str, stamps: list[int]) -> set[int]:
        """Which of the bar times ``stamps`` the store holds (in its writer
        thread: after every batch handed to it before)."""
        bars = await self._committer.in_writer(
            self.store.read_bars, symbol, tf, min(stamps), max(stamps) + 1
        )
        return set(bars.ts.tolist()) & set(stamps)

    def give_up(self, series: list[tuple[str, str]]) -> None:
        """Stop reading series this daemon no longer owns (their entries
        read and not yet acknowledged are the next owner's: it claims them)."""
        for symbol, tf in series:
            if self.streams.pop(self.keys.bars(symbol, tf).encode(), None) is not None:
                log.info("ingest.gave_up", symbol=symbol, tf=tf)

    async def _recreate_groups(self) -> None:
        await recreate_groups(self.redis, self.cfg.group, self.streams)

    async def claim_stale(self) -> int:
        """Move entries that other consumers left pending for ``claim_idle_ms``
        into our pending list (ids only: the pending pass delivers them)."""
        return await self._reader.claim_stale()

    async def _recover_pending(self) -> None:
        self._reader.reread_pending()
        while (batch := await self._reader.read_pending()) is not None:
            self.ledger.count_claimed(batch.size)
            await self._handle(batch)

    # -- the loops -----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set; then finish the batches in flight
        (stored and acknowledged) and return."""
        if not await self._prepare_until_done(stop):
            return
        queue: asyncio.Queue[InFlight | None] = asyncio.Queue()
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
        while (batch := await self._next_idle_batch()) is not None:
            await self._handle(batch)
        return self.totals

    async def _next_idle_batch(self) -> ReadBatch | None:
        """Pending entries first (after a take-over), then new ones."""
        if self._reader.pending_left and (batch := await self._reader.read_pending()):
            return batch
        return await self._reader.read_new(block_ms=None)

    async def _prepare_until_done(self, stop: asyncio.Event) -> bool:
        backoff = self._retry.backoff()
        while not self.prepared and not stop.is_set():
            try:
                await self.prepare()
            except TRANSIENT_REDIS as exc:
                await self._retry.trouble(exc, backoff, stop)
        return self.prepared

    async def _read_loop(
        self, stop: asyncio.Event, queue: asyncio.Queue[InFlight | None], slots: asyncio.Semaphore
    ) -> None:
        backoff = self._retry.backoff()
        while not stop.is_set():
            beat()  # a read returns within block_ms, so an idle loop beats that often
            await slots.acquire()
            if stop.is_set():
                slots.release()
                return
            try:
                batch = await self._next_batch(stop)
            except TRANSIENT_REDIS as exc:
                slots.release()
                await self._retry.trouble(exc, backoff, stop)
                # A reply lost with the connection leaves entries in our
                # pending list: re-read it once the batches in flight are done.
                self._reader.reread_pending()
                continue
            if batch is None:
                slots.release()
                continue
            backoff.reset()
            self._in_flight.add(+1)
            queue.put_nowait(self._committer.submit(batch))

    async def _next_batch(self, stop: asyncio.Event) -> ReadBatch | None:
        if self._reader.pending_left:
            await self._in_flight.drained.wait()  # never re-read entries still in flight
            batch = await self._reader.read_pending()
            if batch is not None:
                self.ledger.count_claimed(batch.size)
                return batch
        if time.monotonic() >= self._schedule.claim:
            self._schedule.claim = time.monotonic() + self.cfg.claim_idle_ms / 1000
            if await self.claim_stale():
                self._reader.reread_pending()
                return None
        if not self.streams:
            await sleep_or_stop(stop, self.cfg.block_ms / 1000)
            return None
        return await self._reader.read_new(self.cfg.block_ms)

    async def _ack_loop(
        self, queue: asyncio.Queue[InFlight | None], slots: asyncio.Semaphore
    ) -> None:
        while (item := await queue.get()) is not None:
            outcome = await self._committer.outcome_of(item)
            await self._retry.until_done(functools.partial(self._committer.acknowledge, outcome))
            self._record(item.batch, outcome)
            self._in_flight.add(-1)
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

    # -- storing and acknowledging --------------------------------------------

    async def _handle(self, batch: ReadBatch) -> BatchOutcome:
        """Store one batch and acknowledge it (sequentially: recovery, tests)."""
        outcome = await self._committer.store(batch)
        await self._committer.acknowledge(outcome)
        self._record(batch, outcome)
        return outcome

    # -- bookkeeping ----------------------------------------------------------

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
            "refused_streams": {
                shown_name(name): why for name, why in self.refused_streams.items()
            },
            "in_flight_batches": self._in_flight.count,
            "totals": vars(self.totals).copy(),
        }
