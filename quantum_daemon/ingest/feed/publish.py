"""The feed's writes to Redis: its bars as replay publishes them.

The fields are encoded by ``ingest.replay`` (the shortest decimal text of
each float, so a bar published twice is a duplicate for ingest, never a
conflict) and the XADDs of one page go in one ``MULTI`` / ``EXEC``
(``ingest.wire``): a page lands whole or not at all, and a page that did not
land is fetched again.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from quantum_daemon.ingest.feed.plan import Row
from quantum_daemon.ingest.replay import encode_values, xadd_commands
from quantum_daemon.ingest.wire import execute_transaction, pack


async def publish_rows(
    client: aioredis.Redis, stream: str, rows: Sequence[Row], maxlen: int
) -> None:
    stamps = [int(row[0]) for row in rows]
    values = [[float(x) for x in row[1:6]] for row in rows]
    xadds = xadd_commands(stream, encode_values(stamps, values), maxlen)
    await execute_transaction(client, [pack(("MULTI",)), *xadds, pack(("EXEC",))])


async def newest_published(client: aioredis.Redis, stream: str) -> int | None:
    """The ``ts`` of the stream's newest entry (None: no entry, or not a bar's)."""
    entries = await client.xrevrange(stream, count=1)
    fields = entries[0][1] if entries else None
    if not fields:
        return None
    ts = fields.get(b"ts", fields.get("ts"))
    try:
        return int(ts)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
