"""``GET /api/signals/stream`` on the real aiohttp app and a real Redis:
every signal of several interleaved streams arrives once and in order
across a reconnect with ``Last-Event-ID``; the query is validated; clients
beyond the bound get 503; heartbeats flow; connecting and disconnecting
many times leaves no Redis connection and no task behind; shutting the
server down ends an open stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis

from quantum_daemon.core.ensemble import flat_signal, signal_fields
from quantum_daemon.domain.config import ApiConfig, RedisConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.secrets import Redactor
from quantum_daemon.web.api import ApiServer
from quantum_daemon.web.signal_stream import SignalStream
from tests.conftest import make_bars
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.ingest_helpers import publish
from tests.sse_client import SseReader

KEYS = Keys()
SERIES = (("AAAUSDT", "1h"), ("BBBUSDT", "1h"), ("AAAUSDT", "5m"))
HOUR_MS = 3_600_000


class Source:
    def readiness(self) -> tuple[bool, str]:
        return True, "ok"

    def alive(self) -> tuple[bool, str]:
        return True, "ok"

    def status(self) -> dict[str, Any]:
        return {}

    def metrics_text(self) -> bytes:
        return b""


@contextlib.asynccontextmanager
async def serving(
    redis_url: str, **api: Any
) -> AsyncIterator[tuple[str, SignalStream, aiohttp.ClientSession]]:
    cfg = ApiConfig(port=0, **api)
    stream = SignalStream(RedisConfig(url=redis_url), cfg, KEYS, Redactor())
    async with ApiServer(cfg, Source(), stream.routes(), on_shutdown=[stream.close]) as server:
        async with aiohttp.ClientSession() as http:
            yield f"http://127.0.0.1:{server.port}/api/signals/stream", stream, http


async def add_signal(client: aioredis.Redis, symbol: str, tf: str, k: int) -> str:
    signal = flat_signal(symbol, tf, 1_704_067_200_000 + k * HOUR_MS, f"bar {k}", None, 1.0, 0.05)
    entry: Any = await client.xadd(KEYS.signals(symbol, tf), signal_fields(signal))  # type: ignore[arg-type]
    return entry.decode()


def published(redis_url: str) -> dict[tuple[str, str], list[str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {s: [i for i, _ in client.xrange(KEYS.signals(*s))] for s in SERIES}
    finally:
        client.close()


def received(events: list[Any]) -> dict[tuple[str, str], list[str]]:
    """Per series, the entry ids in the order they arrived (read off each
    event's cursor: the position of its own series moved to it)."""
    by_series: dict[tuple[str, str], list[str]] = {s: [] for s in SERIES}
    for event in events:
        body = event.json()
        series = (body["symbol"], body["tf"])
        position = dict(part.split("/") for part in event.id.split(","))
        by_series[series].append(position[f"{series[0]}:{series[1]}"])
    return by_series


def test_every_signal_arrives_once_in_order_across_a_reconnect(redis_url: str) -> None:
    """Three interleaved streams (one holding signals from before the
    connection, which are not sent), 90 signals, the client drops after 25
    and reconnects with the last id it had after 30 more arrived."""

    async def scenario() -> tuple[list[Any], list[Any], list[str]]:
        writer = aioredis.Redis.from_url(redis_url)
        old = [await add_signal(writer, "AAAUSDT", "1h", k) for k in range(3)]
        async with serving(redis_url) as (url, _, http):
            first = await http.get(url)
            reader = SseReader(first)
            assert (await reader.take(0)) == []
            for k in range(3, 33):
                for symbol, tf in SERIES:
                    await add_signal(writer, symbol, tf, k)
            head = await reader.take(25)
            first.close()  # the client goes away mid-stream
            for k in range(33, 43):
                for symbol, tf in SERIES:
                    await add_signal(writer, symbol, tf, k)
            again = await http.get(url, headers={"Last-Event-ID": reader.last_id})
            assert again.status == 200
            rest = SseReader(again)
            tail = await rest.take(120 - 25)
            again.close()
        await writer.aclose()
        return head, tail, old

    head, tail, old = asyncio.run(scenario())
    assert all(e.event == "signal" for e in head + tail)
    expected = published(redis_url)
    expected[("AAAUSDT", "1h")] = [i for i in expected[("AAAUSDT", "1h")] if i not in old]
    assert received(head + tail) == expected
    assert sum(map(len, expected.values())) == 120
    bodies = [e.json() for e in head + tail]
    assert {b["status"] for b in bodies} == {"flat"} and all("mu" in b for b in bodies)


def test_the_first_bytes_set_an_id_so_an_early_drop_misses_nothing(redis_url: str) -> None:
    """A client that drops before any signal came resumes where it connected;
    one series also takes a bare entry id in ``?last_event_id=``."""

    async def scenario() -> tuple[str, list[Any], list[Any], list[str]]:
        writer = aioredis.Redis.from_url(redis_url)
        await add_signal(writer, "AAAUSDT", "1h", 0)
        async with serving(redis_url) as (url, _, http):
            first = await http.get(url)
            reader = SseReader(first)
            async with contextlib.aclosing(reader.events()) as events:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.5):
                        async for _ in events:
                            pass
            first.close()
            ids = [await add_signal(writer, "AAAUSDT", "1h", k) for k in range(1, 4)]
            resumed = SseReader(await http.get(url, headers={"Last-Event-ID": reader.last_id}))
            got = await resumed.take(3)
            resumed.response.close()
            single = SseReader(await http.get(f"{url}?symbol=AAAUSDT&tf=1h&last_event_id={ids[0]}"))
            bare = await single.take(2)
            single.response.close()
        await writer.aclose()
        return reader.last_id, got, bare, ids

    connected_at, got, bare, ids = asyncio.run(scenario())
    assert connected_at.startswith("AAAUSDT:1h/")  # the stream's end when it connected
    assert [e.id for e in got] == [f"AAAUSDT:1h/{i}" for i in ids]
    assert [e.id for e in bare] == [f"AAAUSDT:1h/{i}" for i in ids[1:]]


def test_a_filter_follows_only_its_series(redis_url: str) -> None:
    async def scenario() -> list[Any]:
        writer = aioredis.Redis.from_url(redis_url)
        async with serving(redis_url) as (url, _, http):
            reader = SseReader(await http.get(f"{url}?symbol=AAAUSDT"))
            await reader.take(0)
            for k in range(4):
                for symbol, tf in SERIES:
                    await add_signal(writer, symbol, tf, k)
            got = await reader.take(8)
            reader.response.close()
        await writer.aclose()
        return got

    got = asyncio.run(scenario())
    assert {(e.json()["symbol"], e.json()["tf"]) for e in got} == {
        ("AAAUSDT", "1h"),
        ("AAAUSDT", "5m"),
    }


@pytest.mark.parametrize(
    ("query", "headers", "needle"),
    [
        ("?symbol=btc-usdt", {}, "symbol"),
        ("?tf=7m", {}, "timeframe"),
        ("?symbol=" + "A" * 40, {}, "longer than"),
        ("", {"Last-Event-ID": "AAAUSDT:1h/banana"}, "MS-SEQ"),
        ("", {"Last-Event-ID": "not a cursor"}, "SYMBOL:TF/ENTRY-ID"),
        ("?last_event_id=aaa:1h/1-0", {}, "symbol"),
        ("", {"Last-Event-ID": "1-0"}, "SYMBOL:TF/ENTRY-ID"),  # bare id: one series only
    ],
)
def test_a_bad_query_or_last_event_id_is_answered_400(
    redis_url: str, query: str, headers: dict[str, str], needle: str
) -> None:
    async def scenario() -> tuple[int, dict[str, Any]]:
        async with serving(redis_url) as (url, _, http):
            answer = await http.get(url + query, headers=headers)
            return answer.status, await answer.json()

    status, body = asyncio.run(scenario())
    assert status == 400
    assert needle in body["error"]


def connection_count(redis_url: str) -> int:
    admin = redis.Redis.from_url(redis_url)
    try:
        return len(admin.client_list()) - 1  # less this one
    finally:
        admin.close()


async def gone(stream: SignalStream) -> None:
    """Until every handler saw its client go (within a poll of Redis)."""
    for _ in range(100):
        if stream.clients == 0:
            return
        await asyncio.sleep(0.05)


def test_bounded_clients_heartbeats_and_no_leak_after_many_disconnects(redis_url: str) -> None:
    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with serving(redis_url, sse_max_clients=3, sse_heartbeat_s=0.2) as (
            url,
            stream,
            http,
        ):
            await asyncio.sleep(0.2)
            seen["redis_before"] = connection_count(redis_url)
            seen["tasks_before"] = len(asyncio.all_tasks())
            held = [await http.get(url) for _ in range(3)]
            over = await http.get(url)
            seen["over"] = (over.status, (await over.json())["error"])
            seen["redis_held"] = connection_count(redis_url)
            await asyncio.sleep(0.7)
            seen["pings"] = (await held[0].content.read(200)).decode()
            for response in held:
                response.close()
            await gone(stream)
            for _ in range(10):  # 30 more, three at a time (the bound)
                batch = [await http.get(url) for _ in range(3)]
                for response in batch:
                    assert response.status == 200
                    await response.content.readuntil(b"\n\n")
                    response.close()
                await gone(stream)
            for _ in range(50):
                if connection_count(redis_url) == seen["redis_before"]:
                    break
                await asyncio.sleep(0.1)
            seen["clients_after"] = stream.clients
            seen["redis_after"] = connection_count(redis_url)
            seen["tasks_after"] = len(asyncio.all_tasks())
            seen["served"] = stream.served
        return seen

    seen = asyncio.run(scenario())
    assert seen["over"] == (503, "too many stream clients (at most 3)")
    assert seen["redis_held"] == seen["redis_before"] + 3
    assert ": ping" in seen["pings"]
    assert seen["served"] == 33
    assert seen["clients_after"] == 0
    assert seen["redis_after"] == seen["redis_before"]
    assert seen["tasks_after"] == seen["tasks_before"]


def test_shutting_the_server_down_ends_an_open_stream(redis_url: str) -> None:
    async def scenario() -> bytes:
        async with aiohttp.ClientSession() as http:
            cfg = ApiConfig(port=0)
            stream = SignalStream(RedisConfig(url=redis_url), cfg, KEYS, Redactor())
            server = ApiServer(cfg, Source(), stream.routes(), on_shutdown=[stream.close])
            await server.__aenter__()
            response = await http.get(f"http://127.0.0.1:{server.port}/api/signals/stream")
            await response.content.readuntil(b"\n\n")
            # aiohttp would wait 60 s for a handler that does not end by itself
            await asyncio.wait_for(server.__aexit__(None, None, None), timeout=30)
            return await asyncio.wait_for(response.content.read(), timeout=5)

    assert asyncio.run(scenario()) == b""  # the stream ended: EOF, nothing more


DAEMON_CONFIG = """
[ingest]
symbols = ["SSEUSDT"]
timeframes = ["1h"]
block_ms = 50
[models]
symbols = ["BTCUSDT"]
families = ["evo_model"]
"""


async def stream_clients_gone(http: aiohttp.ClientSession, port: int) -> None:
    """Until the daemon's status counts no stream client (each handler sees
    its client gone within a poll of Redis)."""
    for _ in range(100):
        status = await (await http.get(f"http://127.0.0.1:{port}/api/status")).json()
        if status["signal_stream"]["clients"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("stream clients still counted")


def daemon_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_the_daemon_streams_its_own_signals_and_leaks_nothing(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """Bars published one by one become the daemon's (flat) signals, which
    the stream delivers across a reconnect; 40 connections opened and
    dropped leave the daemon's Redis connections and fds as they were."""
    port = api_port()
    config = write_config(tmp_path / "c.toml", redis_url, tmp_path / "data", port, DAEMON_CONFIG)
    config.write_text(config.read_text().replace("[api]\n", "[api]\nsse_heartbeat_s = 0.5\n"))
    bars = make_bars(6, symbol="SSEUSDT")
    signals = KEYS.signals("SSEUSDT", "1h")
    url = f"http://127.0.0.1:{port}/api/signals/stream?symbol=SSEUSDT&tf=1h"

    async def publish_bar(k: int) -> None:
        await asyncio.to_thread(publish, redis_client, bars.slice(k, k + 1))
        for _ in range(400):
            if redis_client.xlen(signals) == k + 1:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no signal for bar {k}")

    async def scenario(pid: int) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        # no keep-alive: an idle connection of the test's would count as the daemon's fd
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            first = SseReader(await http.get(url))
            for k in range(3):
                await publish_bar(k)
            head = await first.take(3)
            first.response.close()
            for k in range(3, 6):
                await publish_bar(k)
            again = SseReader(await http.get(url, headers={"Last-Event-ID": first.last_id}))
            seen["events"] = head + await again.take(3)
            seen["pings"] = (await again.response.content.read(100)).decode()
            again.response.close()
            await asyncio.sleep(1.0)
            seen["before"] = (connection_count(redis_url), daemon_fds(pid))
            for _ in range(5):
                batch = [await http.get(url) for _ in range(8)]
                for response in batch:
                    assert response.status == 200
                    await response.content.readuntil(b"\n\n")
                    response.close()
                await stream_clients_gone(http, port)
            for _ in range(100):
                seen["after"] = (connection_count(redis_url), daemon_fds(pid))
                if seen["after"] == seen["before"]:
                    break
                await asyncio.sleep(0.1)
        return seen

    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready", timeout=60)
        assert daemon.proc is not None
        seen = asyncio.run(scenario(daemon.proc.pid))
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        daemon.kill()
    ids = [i for i, _ in redis_client.xrange(signals)]
    assert [e.id for e in seen["events"]] == [f"SSEUSDT:1h/{i}" for i in ids]
    assert [e.json()["ts"] for e in seen["events"]] == [int(t) for t in bars.ts]
    assert ": ping" in seen["pings"]
    assert seen["after"] == seen["before"]
