"""The exchange feed against a local HTTP server that answers like Binance
(tests/binance_server.py, real 2024 bars in Binance's kline format), a real
redis-server and the daemon's real ingest into a real bar store: gaps are
back-filled page by page, a bar is published only once it has closed, and
exchange or Redis errors lose and double nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis
from structlog.testing import capture_logs

from quantum_daemon.storage.bar_store import Bar, BarStore
from quantum_daemon_dev.redis_server import running_redis
from tests.binance_server import HOUR_MS, BinanceData, running_binance
from tests.feed_helpers import (
    ManualClock,
    feed_config,
    ingest_all,
    ms,
    recorded_bars,
    running_feed,
    stream_ts,
    stream_values,
    until,
)
from tests.ingest_helpers import dlq

DATA = BinanceData.recorded()
BTC_BARS = recorded_bars(DATA, "BTCUSDT")  # 380 closed hourly bars, 08-21 08:00 .. 09-06 03:00
ALL_CLOSED = ms("2024-09-06T04:30")  # the 03:00 bar has closed; 04:00 is forming


def stored(store: BarStore, symbol: str = "BTCUSDT") -> list[Bar]:
    bars = store.read_bars(symbol, "1h")
    columns = (bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume)
    return [
        Bar(symbol, "1h", int(t), *map(float, values)) for t, *values in zip(*columns, strict=True)
    ]


def test_a_gap_of_350_bars_is_back_filled_in_pages_and_stored_once(
    redis_url: str, tmp_path: Path
) -> None:
    """The store holds the first 30 bars; the feed asks for the 350 after
    them 100 at a time, publishes every closed one once, and ingest stores
    exactly the exchange's bars."""
    r = redis.Redis.from_url(redis_url)
    with running_binance(ALL_CLOSED) as fake, BarStore.in_dir(tmp_path) as store:
        store.insert_bars(BTC_BARS[:30])
        config = feed_config(redis_url, fake.url, tmp_path, page_limit=100)

        async def scenario() -> None:
            async with running_feed(config, ManualClock(ALL_CLOSED), store) as (feed, task, _):
                await until(lambda: feed.rounds >= 1, what="the back-fill", task=task)
            await ingest_all(config, store)

        asyncio.run(scenario())
        assert stream_ts(r, "BTCUSDT") == [bar.ts for bar in BTC_BARS[30:]]
        assert stored(store) == BTC_BARS
        assert store.count("BTCUSDT", "1h") == 380
    requests = fake.kline_requests()
    assert [int(q.params["startTime"]) for q in requests] == [
        BTC_BARS[i].ts for i in (30, 130, 230, 330)
    ]
    assert {q.params["limit"] for q in requests} == {"100"}
    assert [q.path for q in fake.requests].count("/api/v3/exchangeInfo") == 1
    assert dlq(r) == []


def test_a_forming_bar_is_published_only_after_its_close(redis_url: str, tmp_path: Path) -> None:
    """At 02:30 the exchange answers the 02:00 bar as it stands (forming); it
    does not reach the stream. After 03:00 it is published once, with the
    exchange's final values."""
    r = redis.Redis.from_url(redis_url)
    start, forming_at = ms("2024-09-05T20:00"), ms("2024-09-06T02:30")
    two_am = ms("2024-09-06T02:00")
    expected = [bar for bar in BTC_BARS if start <= bar.ts <= two_am]
    forming = DATA.forming("BTCUSDT", forming_at)
    assert forming is not None and forming[0] == two_am
    assert forming[4] != f"{expected[-1].close:.8f}"  # differs from the final bar
    clock = ManualClock(forming_at)
    with running_binance(forming_at) as fake, BarStore.in_dir(tmp_path) as store:
        config = feed_config(redis_url, fake.url, since="2024-09-05T20:00:00Z", poll_delay_s=2)

        async def scenario() -> None:
            async with running_feed(config, clock, store) as (feed, task, _):
                await until(lambda: feed.rounds >= 1, what="the first round", task=task)
                assert stream_ts(r, "BTCUSDT") == [bar.ts for bar in expected[:-1]]
                assert feed.next_wake_ms == two_am + HOUR_MS + 2_000
                assert fake.kline_requests()[-1].params["startTime"] == str(start)
                fake.as_of_ms = clock.now = two_am + HOUR_MS + 1_000  # closed, not yet asked
                await asyncio.sleep(0.2)
                assert stream_ts(r, "BTCUSDT")[-1] != two_am
                fake.as_of_ms = two_am + HOUR_MS + 2_000
                clock.move_to(two_am + HOUR_MS + 2_000)
                await until(lambda: feed.rounds >= 2, what="the round after 03:00", task=task)
            await ingest_all(config, store)

        asyncio.run(scenario())
        assert stream_ts(r, "BTCUSDT") == [bar.ts for bar in expected]
        last = stream_values(r, "BTCUSDT")[-1]
        assert float(last[4]) == expected[-1].close and float(last[4]) != float(forming[4])
        assert stored(store) == expected


def test_exchange_errors_mid_run_are_retried_and_nothing_is_missing_or_doubled(
    redis_url: str, tmp_path: Path
) -> None:
    """A 503, a 429 and a dropped connection after the first page, another
    503 later: each is logged and retried after a backoff, the same page is
    asked again, and the store ends with every bar once."""
    r = redis.Redis.from_url(redis_url)
    with running_binance(ALL_CLOSED) as fake, BarStore.in_dir(tmp_path) as store:
        store.insert_bars(BTC_BARS[:100])
        fake.fail_requests({2: 503, 3: 429, 4: "close", 6: 503})
        config = feed_config(redis_url, fake.url, tmp_path, page_limit=100)

        async def scenario() -> None:
            async with running_feed(config, ManualClock(ALL_CLOSED), store) as (feed, task, _):
                await until(lambda: feed.rounds >= 1, what="the back-fill", task=task)
            await ingest_all(config, store)

        with capture_logs() as logs:
            asyncio.run(scenario())
        assert stream_ts(r, "BTCUSDT") == [bar.ts for bar in BTC_BARS[100:]]
        assert stored(store) == BTC_BARS
    starts = [int(q.params["startTime"]) for q in fake.kline_requests()]
    page = [bar.ts for bar in BTC_BARS]
    assert starts == [page[100], page[200], page[200], page[200], page[200], page[300], page[300]]
    errors = [e for e in logs if e["event"] == "feed.exchange_error"]
    assert [e["status"] for e in errors] == [503, 429, None, 503]
    assert errors[1]["error"] == "DDoSProtection" and errors[2]["error"] == "NetworkError"
    assert all(e["log_level"] == "warning" and e["symbol"] == "BTCUSDT" for e in errors)
    assert dlq(r) == []


def test_redis_down_mid_run_loses_nothing(tmp_path: Path) -> None:
    """Redis goes away as a bar closes: the feed logs it, retries with
    backoff, and publishes the bar once Redis is back."""
    start, two_am = ms("2024-09-05T20:00"), ms("2024-09-06T02:00")
    expected = [bar for bar in BTC_BARS if start <= bar.ts <= two_am]
    clock = ManualClock(two_am + HOUR_MS // 2)
    with (
        running_redis(appendonly=True) as server,
        running_binance(clock.now) as fake,
        BarStore.in_dir(tmp_path) as store,
    ):
        config = feed_config(server.url, fake.url, since="2024-09-05T20:00:00Z", poll_delay_s=1)

        async def scenario() -> None:
            async with running_feed(config, clock, store) as (feed, task, _):
                await until(lambda: feed.rounds >= 1, what="the first round", task=task)
                await asyncio.to_thread(server.stop)
                fake.as_of_ms = two_am + HOUR_MS + 1_000
                clock.move_to(two_am + HOUR_MS + 1_000)
                errors = feed.metrics.errors.labels("redis")
                await until(lambda: errors._value.get() >= 2, what="redis errors", task=task)
                await asyncio.to_thread(server.start)
                await until(lambda: feed.rounds >= 2, what="the round after Redis", task=task)
            await ingest_all(config, store)

        with capture_logs() as logs:
            asyncio.run(scenario())
        client = redis.Redis.from_url(server.url)
        assert stream_ts(client, "BTCUSDT") == [bar.ts for bar in expected]
        assert stored(store) == expected
        client.close()
    assert any(e["event"] == "feed.redis_error" for e in logs)
