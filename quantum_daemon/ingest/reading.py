"""Reading this consumer's entries: new ones, its pending list, and claims.

``StreamReader`` reads one batch at a time with ``XREADGROUP``: new entries
(``>``), or, during recovery, this consumer's pending list from the start
(cursor ``0``), stream by stream until each is exhausted. Claiming moves
entries of dead or stalled consumers into that pending list (ids only), so
the next pending pass delivers them.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from quantum_daemon.domain.config import IngestConfig
from quantum_daemon.ingest.batch import ReadBatch, StreamEntries
from quantum_daemon.ingest.decode import Series
from quantum_daemon.ingest.takeover import raw_ranges
from quantum_daemon.ingest.wire import raw_reads
from quantum_daemon.runtime.consumers import claim_from_dead_local_consumers
from quantum_daemon.runtime.logs import get_logger

log = get_logger()


class StreamReader:
    """Reads batches from ``streams`` (shared with the service: discovery
    adds to it, a lost group removes from it)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        cfg: IngestConfig,
        consumer: str,
        streams: dict[bytes, Series],
    ) -> None:
        self.redis = redis
        self._raw = raw_reads(redis)
        self.cfg = cfg
        self.consumer = consumer
        self.streams = streams
        self._pending_cursors: dict[bytes, bytes] = {}

    # -- pending entries -----------------------------------------------------

    def reread_pending(self) -> None:
        """Read this consumer's pending list again from the start."""
        self._pending_cursors = dict.fromkeys(self.streams, b"0")

    @property
    def pending_left(self) -> bool:
        return bool(self._pending_cursors)

    async def read_pending(self) -> ReadBatch | None:
        """The next entries of this consumer's pending list, one batch at a
        time; clears the cursors when every stream is done."""
        if not self._pending_cursors:
            return None
        cursors: dict[Any, Any] = dict(self._pending_cursors)
        reply = await self._raw.xreadgroup(
            self.cfg.group, self.consumer, cursors, count=self.cfg.batch_size
        )
        batch = self.batch_of(reply, "pending")
        done = set(self._pending_cursors)
        for part in batch.parts if batch else ():
            self._pending_cursors[part.stream] = part.entries[-1][0]
            done.discard(part.stream)
        for stream in done:
            del self._pending_cursors[stream]
        return batch

    # -- new entries ---------------------------------------------------------

    async def read_new(self, block_ms: int | None) -> ReadBatch | None:
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
        return self.batch_of(reply, "new")

    def batch_of(self, reply: Any, source: str) -> ReadBatch | None:
        """A batch of a raw XREADGROUP reply: [[stream, [[id, [name, value,
        ...]], ...]], ...] (RESP2) or {stream: [...]} (RESP3)."""
        items = reply.items() if isinstance(reply, dict) else reply or ()
        parts = [
            StreamEntries(stream, self.streams[stream], entries)
            for stream, entries in items
            if entries and stream in self.streams
        ]
        return ReadBatch(parts, source, time.monotonic()) if parts else None

    # -- claiming ------------------------------------------------------------

    async def claim_from_dead_local_consumers(self) -> None:
        """Take over the pending entries of consumers of this host whose
        process is gone."""
        for stream in list(self.streams):
            await claim_from_dead_local_consumers(
                self.redis, stream, self.cfg.group, self.consumer, self.cfg.batch_size
            )

    async def claim_stale(self) -> int:
        """Move entries that other consumers left pending for ``claim_idle_ms``
        into our pending list (ids only: the pending pass delivers them).
        One pass over each stream's pending list, following XAUTOCLAIM's
        cursor: restarting from ``0-0`` would claim our own just-claimed
        entries again once they are idle (with a short ``claim_idle_ms``,
        millions of times)."""
        claimed = 0
        raw = raw_ranges(self.redis)  # redis-py drops the cursor of a JUSTID reply
        for stream in list(self.streams):
            cursor: bytes | str = "0-0"
            while True:
                cursor, ids = (await raw.execute_command(
                    "XAUTOCLAIM", stream, self.cfg.group, self.consumer,
                    self.cfg.claim_idle_ms, cursor, "COUNT", self.cfg.batch_size, "JUSTID",
                ))[:2]  # fmt: skip
                claimed += len(ids)
                if cursor in (b"0-0", "0-0"):
                    break
        if claimed:
            log.info("ingest.claimed", entries=claimed)
        return claimed
