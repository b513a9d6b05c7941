"""The bar streams to read and their consumer group (the consumers in it:
``runtime.consumers``).

A stream name found by discovery is checked before anything uses it
(``classify_stream``): ``{prefix}:bars:{SYMBOL}:{TF}`` in UTF-8, the symbol
by ``domain.ids.check_symbol``, the timeframe a short token of letters and
digits (an unknown one is read, and its entries dead-lettered as
``unknown_timeframe``). Any other name under the pattern is refused with a
reason and never read: it reaches no log line, metric label or store row.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from quantum_daemon.domain.config import IngestConfig
from quantum_daemon.domain.errors import BadDataError
from quantum_daemon.domain.ids import check_symbol, check_timeframe_token
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.decode import Series
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

SCAN_COUNT = 1000
SHOWN_NAME_CHARS = 200


@dataclass(frozen=True)
class RefusedStream:
    """A key under the bar-stream pattern that is not a usable bar stream."""

    name: bytes
    reason: str


def configured_streams(cfg: IngestConfig, keys: Keys) -> dict[bytes, Series]:
    return {
        keys.bars(symbol, tf).encode(): Series.of(symbol, tf, cfg.max_future_s)
        for symbol in cfg.symbols
        for tf in cfg.timeframes
    }


async def discover_streams(
    redis: aioredis.Redis, keys: Keys, cfg: IngestConfig
) -> tuple[dict[bytes, Series], list[RefusedStream]]:
    """Every existing stream whose name is a bar stream (the DLQ excluded),
    and the refused names under the pattern."""
    found: dict[bytes, Series] = {}
    refused: list[RefusedStream] = []
    async for key in redis.scan_iter(match=keys.bars_pattern, count=SCAN_COUNT, _type="STREAM"):
        name = key if isinstance(key, bytes) else str(key).encode(errors="surrogateescape")
        verdict = classify_stream(keys, name, cfg.max_future_s)
        if isinstance(verdict, Series):
            found[name] = verdict
        elif verdict is not None:
            refused.append(verdict)
    return found, refused


def classify_stream(
    keys: Keys, name: bytes, max_future_s: float = 0.0
) -> Series | RefusedStream | None:
    """The series of a bar stream's name; a ``RefusedStream`` with the reason
    for a name under the pattern that is not a usable one; None for what is
    not a bar stream (the DLQ, a key with more parts). Never raises."""
    try:
        text = name.decode()
    except UnicodeDecodeError:
        return RefusedStream(name, "the name is not UTF-8")
    parsed = keys.parse_bars(text)
    if parsed is None:
        return None
    symbol, tf = parsed
    try:
        check_symbol(symbol)
        check_timeframe_token(tf)
    except BadDataError as exc:
        return RefusedStream(name, str(exc))
    return Series.of(symbol, tf, max_future_s)


async def ensure_group(redis: aioredis.Redis, stream: bytes, group: str) -> bool:
    """Create the group (reading from the start; MKSTREAM) unless it exists.
    False when the key is not a stream (it is then left alone)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return True
        if str(exc).startswith("WRONGTYPE"):
            log.error(
                "ingest.stream_invalid", stream=stream.decode(errors="replace"), error=str(exc)
            )
            return False
        raise
    log.info("ingest.group_created", stream=stream.decode(errors="replace"), group=group)
    return True


async def group_state(
    redis: aioredis.Redis, stream: bytes, group: str
) -> tuple[int | None, int] | None:
    """(lag, pending) of ``group`` on ``stream`` (lag: entries not yet read,
    None when Redis cannot tell), or None without such a group."""
    for info in await redis.xinfo_groups(stream):
        if _text(info["name"]) == group:
            lag = info.get("lag")
            return (None if lag is None else int(lag)), int(info["pending"])
    return None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def shown_name(name: bytes) -> str:
    """A stream name for logs and status, whatever its bytes: printable
    ASCII (escapes for the rest), at most ``SHOWN_NAME_CHARS``."""
    text = repr(bytes(name))[2:-1]
    return text if len(text) <= SHOWN_NAME_CHARS else text[:SHOWN_NAME_CHARS] + "..."
