"""Redis at the wire level, where redis-py's per-entry Python work would
cost as much as the whole decode (the hot path of ingest).

- Reads: ``raw_reads`` gives a client whose ``XREADGROUP`` replies stay as
  Redis sent them (flat ``[name, value, ...]`` lists; no dict per entry).
- Writes: the dead letters and ``XACK``s of a committed batch are packed by
  hiredis (in C; redis-py's asyncio client packs in Python, a few
  microseconds per argument) inside one ``MULTI`` / ``EXEC``, written at
  once on a pooled connection, and their replies read back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from quantum_daemon.ingest.batch import BatchOutcome

pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command  # its stub wants a 1-tuple


def finish_commands(outcome: BatchOutcome, dlq: str, dlq_maxlen: int, group: str) -> list[bytes]:
    """MULTI, an XADD to the DLQ per dead letter, an XACK per stream, EXEC."""
    commands = [pack(("MULTI",))]
    for letter in outcome.dead_letters:
        fields = chain.from_iterable(letter.as_fields().items())
        commands.append(pack(("XADD", dlq, "MAXLEN", "~", dlq_maxlen, "*", *fields)))
    for stream, ids in outcome.acks.items():
        if ids:
            commands.append(pack(("XACK", stream, group, *ids)))
    commands.append(pack(("EXEC",)))
    return commands


async def execute_transaction(client: aioredis.Redis, commands: Sequence[bytes]) -> list[Any]:
    """Send MULTI ... EXEC packed commands; return EXEC's replies, raising
    the first error among them. On any failure the connection is dropped
    (an unfinished MULTI is then discarded by Redis) and the error raised."""
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(b"".join(commands))
        for _ in commands[:-1]:
            await conn.read_response()  # +OK / +QUEUED; an error reply raises
        results = await conn.read_response()
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)
    errors = [r for r in results or () if isinstance(r, ResponseError)]
    if errors:
        raise errors[0]
    return list(results or ())


def raw_reads(client: aioredis.Redis) -> aioredis.Redis:
    """A client on ``client``'s connection pool whose XREADGROUP replies are
    returned as Redis sent them: [[stream, [[id, [name, value, ...]], ...]],
    ...] (RESP2) or {stream: [...]} (RESP3)."""
    raw = aioredis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XREADGROUP", _as_sent)
    return raw


def _as_sent(response: Any, **options: Any) -> Any:
    return response
