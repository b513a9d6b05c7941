"""``GET /api/signals/stream``: the published signals as server-sent events
(docs/push.md).

One event per entry of ``quantum:signals:{SYMBOL}:{TF}`` (``event: signal``,
``data:`` the signal as JSON, ``id:`` the cursor of ``web.stream_cursor``),
from every signal stream or those of ``?symbol=`` and / or ``?tf=``. A new
connection starts at the streams' ends; one with ``Last-Event-ID`` (or
``?last_event_id=``) continues right after it, stream by stream. Its first
bytes set that id already, so a client that drops before any signal came
resumes from where it connected.

Each client reads with a blocking ``XREAD`` on a Redis connection of its
own, a short ``BLOCK`` at a time: between two reads it notices that the
client went away or that the server shuts down, and closes the
connection. At most ``[api] sse_max_clients`` clients at once (503 above);
a ``: ping`` comment every ``sse_heartbeat_s`` keeps proxies from closing
an idle stream; a client that stops reading is dropped after aiohttp-sse's
send timeout. On a Redis error the stream ends; the client reconnects after
the ``retry:`` delay and resumes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_sse import EventSourceResponse
from redis.exceptions import RedisError

from quantum_daemon.core.ensemble import field_text, parse_signal, signal_json
from quantum_daemon.domain.config import ApiConfig, RedisConfig
from quantum_daemon.domain.errors import BadDataError
from quantum_daemon.domain.ids import BadIdentifier, check_symbol, check_timeframe
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.secrets import Redactor
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.redis_link import make_client
from quantum_daemon.web.responses import json_response
from quantum_daemon.web.stream_cursor import (
    START,
    Series,
    entry_key,
    format_cursor,
    parse_cursor,
)

log = get_logger()

POLL_MS = 500  # one XREAD's BLOCK: how soon a gone client or a shutdown is seen
RESCAN_S = 5.0  # how often a connection looks for signal streams created since
BATCH = 100  # entries per stream and read
RETRY_MS = 2000  # the client's reconnect delay after the stream ended

Entry = tuple[Series, str, Mapping[Any, Any]]


class SignalStream:
    """The route, its client count and its shutdown."""

    def __init__(
        self, redis_cfg: RedisConfig, api: ApiConfig, keys: Keys, redact: Redactor
    ) -> None:
        self.redis_cfg = redis_cfg
        self.api = api
        self.keys = keys
        self.redact = redact
        self.clients = 0
        self.served = 0
        self.closing = asyncio.Event()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/signals/stream", self.handle)]

    async def close(self, _: web.Application | None = None) -> None:
        """End every stream (aiohttp's ``on_shutdown``: before it waits for handlers)."""
        self.closing.set()

    def status(self) -> dict[str, Any]:
        return {"clients": self.clients, "max_clients": self.api.sse_max_clients,
                "served": self.served}  # fmt: skip

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            only = _series_filter(request)
            resume = parse_cursor(_last_event_id(request), _single(only))
        except BadDataError as exc:
            return json_response({"error": str(exc)}, 400)
        if self.clients >= self.api.sse_max_clients:
            return json_response(
                {"error": f"too many stream clients (at most {self.api.sse_max_clients})"}, 503
            )
        self.clients += 1
        self.served += 1
        conn = make_client(self.redis_cfg)
        try:
            return await self._serve(request, conn, only, resume)
        finally:
            self.clients -= 1
            await conn.aclose()

    async def _serve(
        self,
        request: web.Request,
        conn: aioredis.Redis,
        only: tuple[str | None, str | None],
        resume: dict[Series, str],
    ) -> web.StreamResponse:
        reader = Reader(conn, self.keys, only)
        try:
            await reader.start(resume)
        except (RedisError, OSError) as exc:
            return json_response({"error": f"redis unavailable: {exc}"}, 503)
        response = EventSourceResponse(ping_interval=self.api.sse_heartbeat_s)
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\nid: {reader.cursor()}\n\n".encode())
        try:
            await self._pump(request, response, reader)
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away while we wrote
        except (RedisError, OSError) as exc:
            log.warning("sse.redis_error", error=str(exc))
        finally:
            response.stop_streaming()
        return response

    async def _pump(
        self, request: web.Request, response: EventSourceResponse, reader: Reader
    ) -> None:
        while _connected(request, response) and not self.closing.is_set():
            for series, entry_id, fields in await reader.read():
                reader.positions[series] = entry_id
                data = self.redact(json.dumps(_signal_data(series, fields), default=str))
                await response.send(data, id=reader.cursor(), event="signal")


class Reader:
    """One connection's positions in the signal streams it follows."""

    def __init__(
        self, conn: aioredis.Redis, keys: Keys, only: tuple[str | None, str | None]
    ) -> None:
        self.conn = conn
        self.keys = keys
        self.only = only
        self.positions: dict[Series, str] = {}
        self._rescan_at = 0.0

    async def start(self, resume: dict[Series, str]) -> None:
        """Every followed stream from the cursor when resuming, else from its end."""
        for series in await self._streams():
            if resume:
                self.positions[series] = resume.get(series, START)
            else:
                self.positions[series] = await self._tail(series)
        self._rescan_at = asyncio.get_running_loop().time() + RESCAN_S

    def cursor(self) -> str:
        return format_cursor(self.positions)

    async def read(self) -> list[Entry]:
        """The next entries of every stream, in entry-id order (each stream's
        order kept); empty after ``POLL_MS`` without any."""
        await self._rescan()
        streams: dict[Any, Any] = {self.keys.signals(*s): p for s, p in self.positions.items()}
        if not streams:  # no signal stream yet: look again after a poll's time
            self._rescan_at = 0.0
            await asyncio.sleep(POLL_MS / 1000)
            return []
        reply: Any = await self.conn.xread(streams, count=BATCH, block=POLL_MS)
        entries: list[Entry] = []
        for stream, items in reply or []:
            series = self.keys.parse_signals(field_text(stream))
            if series is not None:
                entries += [(series, field_text(i), f or {}) for i, f in items]
        return sorted(entries, key=lambda e: (entry_key(e[1]), e[0]))

    async def _rescan(self) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._rescan_at:
            return
        self._rescan_at = now + RESCAN_S
        for series in await self._streams():
            self.positions.setdefault(series, START)  # created since: all of it is new

    async def _streams(self) -> list[Series]:
        symbol, tf = self.only
        if symbol is not None and tf is not None:
            return [(symbol, tf)]
        found: set[Series] = set()
        async for name in self.conn.scan_iter(match=self.keys.signals_pattern, count=1000):
            series = _valid(self.keys.parse_signals(field_text(name)))
            if series is not None and symbol in (None, series[0]) and tf in (None, series[1]):
                found.add(series)
        return sorted(found)

    async def _tail(self, series: Series) -> str:
        last: Any = await self.conn.xrevrange(self.keys.signals(*series), count=1)
        return field_text(last[0][0]) if last else START


def _series_filter(request: web.Request) -> tuple[str | None, str | None]:
    # an empty parameter (``?symbol=&tf=1h``, a form left blank) filters nothing
    symbol, tf = request.query.get("symbol") or None, request.query.get("tf") or None
    return (
        None if symbol is None else check_symbol(symbol),
        None if tf is None else check_timeframe(tf),
    )


def _single(only: tuple[str | None, str | None]) -> Series | None:
    symbol, tf = only
    return (symbol, tf) if symbol is not None and tf is not None else None


def _last_event_id(request: web.Request) -> str:
    return request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or ""


def _valid(series: Series | None) -> Series | None:
    """A stream name's series, if both parts are identifiers (a foreign key
    that happens to match the pattern is not followed)."""
    if series is None:
        return None
    try:
        return check_symbol(series[0]), check_timeframe(series[1])
    except BadIdentifier:
        return None


def _connected(request: web.Request, response: EventSourceResponse) -> bool:
    transport = request.transport
    return response.is_connected() and transport is not None and not transport.is_closing()


def _signal_data(series: Series, fields: Mapping[Any, Any]) -> dict[str, Any]:
    """The signal as ``/api/signals`` shows it; an entry that is not one
    (written by someone else) as its raw fields."""
    symbol, tf = series
    try:
        data: dict[str, Any] = signal_json(parse_signal(fields))
    except (KeyError, ValueError, TypeError):
        data = {field_text(k): field_text(v) for k, v in fields.items()}
    return data | {"symbol": symbol, "tf": tf}
