"""Taking over a series from another daemon (docs/scaling.md, "Ownership").

The new owner must end with every bar of the stream in its own store, once,
whatever the old owner had read, acknowledged or left pending:

1. its history: every entry still in the stream (``XRANGE``, in chunks),
   stored like any batch; a bar already stored is a no-op (the store's key
   is (symbol, tf, ts)). Its rejections are not dead-lettered again: the
   reader that first took such an entry did that, or the entry is still
   pending and step 2 brings it;
2. the group's pending entries of every consumer on that stream
   (``XAUTOCLAIM`` with no idle time: the lease says their reader is gone),
   which the pending pass then stores (no-ops) and acknowledges;
3. from then on the stream is read with the group like any other.

Entries the old owner never read stay undelivered in the group and come in
step 3. Nothing needs the old owner's store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from quantum_daemon.ingest.batch import ReadBatch, StreamEntries
from quantum_daemon.ingest.decode import Series


def raw_ranges(client: aioredis.Redis) -> aioredis.Redis:
    """A client on ``client``'s pool whose XRANGE and XAUTOCLAIM replies stay
    as sent (XRANGE: [[id, [name, value, ...]], ...], the form the batch
    processor reads; XAUTOCLAIM: [cursor, ids, deleted])."""
    raw = aioredis.Redis(connection_pool=client.connection_pool)
    for command in ("XRANGE", "XAUTOCLAIM"):
        raw.set_response_callback(command, lambda response, **_: response)
    return raw


async def history_batches(
    raw: aioredis.Redis, stream: bytes, series: Series, chunk: int
) -> AsyncIterator[ReadBatch]:
    """The stream's entries from its first on, ``chunk`` at a time."""
    start: Any = b"-"
    while True:
        entries: Any = await raw.xrange(stream, min=start, max=b"+", count=chunk)
        if not entries:
            return
        yield ReadBatch([StreamEntries(stream, series, list(entries))], "history", time.monotonic())
        if len(entries) < chunk:
            return
        start = b"(" + _bytes(entries[-1][0])


async def claim_all_pending(
    client: aioredis.Redis, stream: bytes, group: str, consumer: str, chunk: int
) -> int:
    """Move every pending entry of the group on ``stream`` to ``consumer``
    (``client``: a ``raw_ranges`` one)."""
    claimed, cursor = 0, "0-0"
    while True:
        reply = await client.execute_command(
            "XAUTOCLAIM", stream, group, consumer, 0, cursor, "COUNT", chunk, "JUSTID"
        )
        cursor, ids = _bytes(reply[0]).decode(), reply[1]
        claimed += len(ids)
        if cursor == "0-0":
            return claimed


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
