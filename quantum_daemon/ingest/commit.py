"""The batch commit path: store a batch, then acknowledge it.

The store has a single writer thread; a batch's outcome (bars inserted, dead
letters, ids to acknowledge) is committed there first, then its dead letters
and its ``XACK`` go to Redis in one ``MULTI``. A store transaction that
failed committed nothing, so it is simply run again (with backoff).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from quantum_daemon.domain.config import IngestConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.batch import BatchOutcome, BatchProcessor, ReadBatch
from quantum_daemon.ingest.metrics import IngestMetrics
from quantum_daemon.ingest.wire import execute_transaction, finish_commands
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.liveness import beat
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.bar_store import BarStore

log = get_logger()

T = TypeVar("T")
DLQ_MAXLEN = 100_000


@dataclass
class InFlight:
    """A batch handed to the writer thread, and its outcome to come."""

    batch: ReadBatch
    outcome: asyncio.Future[BatchOutcome]


class InFlightCount:
    """Batches read but not yet acknowledged; ``drained`` is set at zero."""

    def __init__(self, metrics: IngestMetrics) -> None:
        self.metrics = metrics
        self.count = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def add(self, delta: int) -> None:
        self.count += delta
        self.metrics.in_flight.set(self.count)
        if self.count == 0:
            self.drained.set()
        else:
            self.drained.clear()


class BatchCommitter:
    """Owns the store's writer thread; see the module docstring."""

    def __init__(
        self,
        store: BarStore,
        redis: aioredis.Redis,
        cfg: IngestConfig,
        keys: Keys,
        metrics: IngestMetrics,
        reconnect_max_s: float,
    ) -> None:
        self.processor = BatchProcessor(store, cfg.max_entry_bytes)
        self.redis = redis
        self.cfg = cfg
        self.keys = keys
        self.metrics = metrics
        self.reconnect_max_s = reconnect_max_s
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bar-store")

    def close(self) -> None:
        """Wait for the writer thread to finish its transaction, then stop it."""
        self._writer.shutdown(wait=True)

    async def in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def submit(self, batch: ReadBatch) -> InFlight:
        """Start storing ``batch`` in the writer thread."""
        loop = asyncio.get_running_loop()
        return InFlight(batch, loop.run_in_executor(self._writer, self.processor.process, batch))

    async def store(self, batch: ReadBatch) -> BatchOutcome:
        """Store ``batch`` and wait for its outcome (no retry)."""
        return await self.in_writer(self.processor.process, batch)

    async def outcome_of(self, item: InFlight) -> BatchOutcome:
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
                beat()  # retrying is progress (not ready: store.write_fault), not a stall
                future = self.submit(item.batch).outcome

    async def acknowledge(self, outcome: BatchOutcome) -> None:
        """Dead letters and acknowledgements of a committed batch, atomically."""
        commands = finish_commands(outcome, self.keys.dlq, DLQ_MAXLEN, self.cfg.group)
        await execute_transaction(self.redis, commands)
