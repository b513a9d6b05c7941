"""Taking over a series from another daemon (docs/scaling.md, "Ownership").

The new owner must end with every bar of the stream in its own store, once,
whatever the old owner had read, acknowledged or left pending:

1. its history: the entries the group has delivered already (up to its
   ``last-delivered-id``; the later ones come in step 3), from after the
   newest chunk of them that its store holds completely (``history_start``,
   scanning back with ``XREVRANGE``: a daemon that owned the series before,
   or restarts, loads only what came since; a new one loads them all), read
   forward (``XRANGE``, in chunks) and stored like any batch; a bar already
   stored is a no-op (the store's key is (symbol, tf, ts)). Its rejections
   are not dead-lettered again: the reader that was delivered such an entry
   did that, or the entry is still pending and step 2 brings it;
2. the group's pending entries of every consumer on that stream
   (``XAUTOCLAIM`` with no idle time: the lease says their reader is gone),
   which the pending pass then stores (no-ops) and acknowledges;
3. from then on the stream is read with the group like any other.

Entries the old owner never read stay undelivered in the group and come in
step 3. Nothing needs the old owner's store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from quantum_daemon.ingest.batch import ReadBatch, StreamEntries
from quantum_daemon.ingest.decode import Series


def raw_ranges(client: aioredis.Redis) -> aioredis.Redis:
    """A client on ``client``'s pool whose XRANGE and XAUTOCLAIM replies stay
    as sent (XRANGE: [[id, [name, value, ...]], ...], the form the batch
    processor reads; XAUTOCLAIM: [cursor, ids, deleted])."""
    raw = aioredis.Redis(connection_pool=client.connection_pool)
    for command in ("XRANGE", "XREVRANGE", "XAUTOCLAIM"):
        raw.set_response_callback(command, lambda response, **_: response)
    return raw


Present = Callable[[list[int]], Awaitable[set[int]]]  # of these bar ts, the stored ones


async def last_delivered(client: aioredis.Redis, stream: bytes, group: str) -> bytes:
    """The group's ``last-delivered-id`` on ``stream`` (``0-0``: none yet)."""
    for info in await client.xinfo_groups(stream):
        if _bytes(info["name"]).decode(errors="replace") == group:
            return _bytes(info["last-delivered-id"])
    return b"0-0"


async def history_start(
    raw: aioredis.Redis, stream: bytes, chunk: int, present: Present, end: bytes = b"+"
) -> bytes:
    """Where the history (up to ``end``) to load starts: after the newest
    chunk of entries whose bars are all stored already, else at the first."""
    top: Any = end
    while True:
        entries: Any = await raw.xrevrange(stream, max=top, min=b"-", count=chunk)
        if not entries:
            return b"-"
        stamps = [ts for ts in map(_entry_ts, entries) if ts is not None]
        if stamps and set(stamps) <= await present(stamps):
            return b"(" + _bytes(entries[0][0])  # XREVRANGE: the newest first
        if len(entries) < chunk:
            return b"-"
        top = b"(" + _bytes(entries[-1][0])


async def history_batches(
    raw: aioredis.Redis,
    stream: bytes,
    series: Series,
    chunk: int,
    start: bytes = b"-",
    end: bytes = b"+",
) -> AsyncIterator[ReadBatch]:
    """The stream's entries from ``start`` to ``end``, ``chunk`` at a time."""
    while True:
        entries: Any = await raw.xrange(stream, min=start, max=end, count=chunk)
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


def _entry_ts(entry: Any) -> int | None:
    """The ``ts`` field of a raw entry, None where there is no valid one."""
    fields = entry[1] or ()
    for name, value in zip(fields[::2], fields[1::2], strict=False):
        if name in (b"ts", "ts"):
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()
