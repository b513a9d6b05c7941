"""Publishing signals so that a bar gets one signal, from its series' owner.

One script per publish, atomic in Redis: it refuses the whole publish when
the series' lease (``runtime.ownership``) is not the value the publisher
holds (a daemon whose lease expired, or that a new owner replaced, writes
nothing), and adds only the signals of bars after the newest one in the
stream, so that a new owner catching up on bars the old one had already
answered adds none of them again. Without a fence value (a publisher that
is not part of ownership, such as a test's service) only the second check
is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import redis.asyncio as aioredis

from quantum_daemon.core.ensemble import Signal
from quantum_daemon.inference.context import stream_fields

FENCE_REFUSED = -1

# KEYS[1] lease, KEYS[2] signal stream; ARGV[1] lease value ('' = no fence),
# ARGV[2] maxlen, then per signal: ts, number of field parts, the parts.
PUBLISH_LUA = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local last = nil
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #top > 0 then
  local f = top[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'ts' then last = tonumber(f[i + 1]) end
  end
end
local added, i = 0, 3
while i <= #ARGV do
  local ts, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  if last == nil or ts > last then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, i + 2, i + 1 + n))
    last = ts
    added = added + 1
  end
  i = i + 2 + n
end
return added
"""


def queue_publish(
    pipe: Any, lease_key: str, stream: str, fence: str, signals: Sequence[Signal], maxlen: int
) -> None:
    """Queue the fenced publish of ``signals`` (in bar order) on a pipeline;
    its reply is the number added, or ``FENCE_REFUSED``."""
    args: list[str | int] = [fence, maxlen]
    for signal in signals:
        parts = list(chain.from_iterable(stream_fields(signal).items()))
        args += [signal.ts, len(parts), *parts]
    pipe.eval(PUBLISH_LUA, 2, lease_key, stream, *args)


async def publish_signals(
    client: aioredis.Redis,
    lease_key: str,
    stream: str,
    fence: str,
    signals: Sequence[Signal],
    maxlen: int,
) -> int:
    """Add ``signals`` (in bar order) to ``stream``; the number added, or
    ``FENCE_REFUSED`` when ``fence`` is not the series' lease."""
    async with client.pipeline(transaction=False) as pipe:
        queue_publish(pipe, lease_key, stream, fence, signals, maxlen)
        (added,) = await pipe.execute()
    return int(added)
