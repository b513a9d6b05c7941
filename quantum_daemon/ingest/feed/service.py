"""The feed loop: back-fill each series from where it stands, then publish
every bar once it has closed.

Start (``prepare``, retried with backoff while the exchange or Redis is
away): load the exchange's markets (a pair it does not list, a timeframe it
does not offer, or a refused login is a ``ConfigError``: exit 78), then put
each series' cursor on the newest bar already known (the bar store's newest
bar or the stream's newest entry, whichever is later; for an empty series
``[feed] since``, else ``backfill_bars`` back).

A round: for each series, ask for the bars after its cursor (``fetch_ohlcv``
with ``since`` and ``limit``, page after page), keep the closed ones
(``plan.closed_rows``), publish each page (one MULTI/EXEC) and only then move
the cursor. An exchange or Redis error leaves the cursor where it was (so
nothing is lost: the page is fetched again), is logged, and the round is
retried after a jittered backoff. Between rounds the feed sleeps until the
next bar close plus ``poll_delay_s``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import NoPermissionError, RedisError

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.errors import ConfigError, FatalError
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.ingest.feed.clock import Clock, WallClock
from quantum_daemon.ingest.feed.exchange import (
    ExchangeClient,
    ExchangeError,
    Failure,
    Stopped,
    classify,
)
from quantum_daemon.ingest.feed.metrics import FeedMetrics
from quantum_daemon.ingest.feed.plan import (
    FeedSeries,
    Row,
    closed_rows,
    has_closed_bar,
    next_close_ms,
    next_wanted,
    start_cursor,
)
from quantum_daemon.ingest.feed.publish import newest_published, publish_rows
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.liveness import beat
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

NewestStored = Callable[[], dict[tuple[str, str], int]]  # BarStore.last_ts
# A bar closed but not answered yet: ask again this many times, a poll delay
# apart (at least MIN_RETRY_S), before waiting for the next close.
BEHIND_RETRIES = 3
MIN_RETRY_S = 1.0


@dataclass
class SeriesState:
    """What the feed knows of one series (``status``)."""

    cursor: int  # open time of the newest bar published (or known stored)
    published: int = 0
    last_error: str | None = None


class FeedService:
    """``async with FeedService(...) as feed: await feed.run(stop)``."""

    def __init__(
        self,
        cfg: Config,
        client: aioredis.Redis,
        newest_stored: NewestStored,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.cfg = cfg
        self.feed = cfg.feed
        self.client = client
        self.newest_stored = newest_stored
        self.clock: Clock = clock or WallClock()
        self.metrics = FeedMetrics(registry)
        self.backoff = Backoff(base=self.feed.retry_base_s, cap=self.feed.retry_max_s)
        keys = Keys(cfg.redis.prefix)
        self.series = [
            FeedSeries(pair, symbol, tf, timeframe_ms(tf), keys.bars(symbol, tf))
            for pair, symbol, tf in self.feed.series()
        ]
        self.states: dict[str, SeriesState] = {}
        self.exchange: ExchangeClient | None = None
        self.rounds = 0  # rounds that ended with every series caught up (tests wait on it)
        self.next_wake_ms: int | None = None
        self._behind_retries = 0

    async def __aenter__(self) -> FeedService:
        self.exchange = ExchangeClient(self.feed)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.exchange is not None:
            self.exchange.close()

    # -- the loop ----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if not await self.prepare(stop):
            return
        while not stop.is_set():
            failed, behind = await self._round(stop)
            if stop.is_set():
                break
            if failed:
                await sleep_or_stop(stop, self.backoff.next_delay())
                continue
            self.backoff.reset()
            self.rounds += 1
            await self._sleep_until_next_bar(stop, behind)
        log.info("feed.stopped", published=sum(s.published for s in self.states.values()))

    async def prepare(self, stop: asyncio.Event) -> bool:
        """Markets loaded and every cursor placed; False if stopped first."""
        assert self.exchange is not None, "use FeedService as an async context manager"
        while not stop.is_set():
            try:
                await self.exchange.load_markets(stop)
                self.exchange.check_series(self.series)
                await self._place_cursors()
                return True
            except Stopped:
                return False
            except ExchangeError as exc:
                self._refused_at_start(classify(exc))
                self._exchange_failed(None, classify(exc))
            except RedisError as exc:
                self._redis_failed(None, exc)
            await sleep_or_stop(stop, self.backoff.next_delay())
        return False

    async def _place_cursors(self) -> None:
        stored = await asyncio.to_thread(self.newest_stored)
        now = self.clock.now_ms()
        for one in self.series:
            published = await newest_published(self.client, one.stream)
            known = stored.get((one.symbol, one.tf))
            cursor = start_cursor(
                [known, published], self.feed.since_ms(), self.feed.backfill_bars, now, one.tf_ms
            )
            self.states[one.name] = SeriesState(cursor)
            log.info(
                "feed.resuming",
                symbol=one.symbol,
                tf=one.tf,
                pair=one.pair,
                from_ts=next_wanted(cursor, one.tf_ms),
                stored_ts=known,
                published_ts=published,
            )
        log.info("feed.started", exchange=self.feed.exchange, series=[s.name for s in self.series])

    async def _round(self, stop: asyncio.Event) -> tuple[bool, bool]:
        """(whether any series failed, whether any is behind a closed bar)."""
        failed = behind = False
        for one in self.series:
            try:
                await self._catch_up(stop, one)
            except Stopped:
                return False, False
            except ExchangeError as exc:
                failed = True
                self._exchange_failed(one, classify(exc))
            except RedisError as exc:
                failed = True
                self._redis_failed(one, exc)
            state = self.states[one.name]
            behind = behind or has_closed_bar(state.cursor, one.tf_ms, self.clock.now_ms())
        return failed, behind

    async def _catch_up(self, stop: asyncio.Event, one: FeedSeries) -> None:
        """Publish every closed bar after the series' cursor, page by page."""
        assert self.exchange is not None
        state = self.states[one.name]
        sent: list[Row] = []
        try:
            while not stop.is_set():
                now = self.clock.now_ms()
                if not has_closed_bar(state.cursor, one.tf_ms, now):
                    break
                since = next_wanted(state.cursor, one.tf_ms)
                rows = await self.exchange.fetch_page(stop, one, since, self.feed.page_limit)
                beat()
                closed = closed_rows(rows, since, one.tf_ms, now)
                if not closed:
                    break
                await publish_rows(self.client, one.stream, closed, self.cfg.ingest.stream_maxlen)
                self._published(one, state, closed)
                sent += closed
                if len(rows) < self.feed.page_limit:
                    break
            state.last_error = None
        finally:
            if sent:
                log.info(
                    "feed.published",
                    symbol=one.symbol,
                    tf=one.tf,
                    bars=len(sent),
                    first_ts=int(sent[0][0]),
                    last_ts=int(sent[-1][0]),
                )

    def _published(self, one: FeedSeries, state: SeriesState, rows: Sequence[Row]) -> None:
        state.cursor = int(rows[-1][0])
        state.published += len(rows)
        self.metrics.published.labels(one.symbol, one.tf).inc(len(rows))
        self.metrics.newest.labels(one.symbol, one.tf).set(state.cursor)

    async def _sleep_until_next_bar(self, stop: asyncio.Event, behind: bool) -> None:
        now = self.clock.now_ms()
        delay_ms = int(self.feed.poll_delay_s * 1000)
        if behind and self._behind_retries < BEHIND_RETRIES:
            self._behind_retries += 1
            wake = now + max(delay_ms, int(MIN_RETRY_S * 1000))
        else:
            self._behind_retries = 0
            wake = next_close_ms(now, [s.tf_ms for s in self.series]) + delay_ms
        self.next_wake_ms = wake
        await self.clock.sleep_until(stop, wake)

    # -- errors ------------------------------------------------------------

    def _refused_at_start(self, failure: Failure) -> None:
        if not failure.transient:
            raise ConfigError(
                f"feed: {self.feed.exchange} refused at start ({failure.error}): "
                f"{failure.message[:300]}"
            )

    def _exchange_failed(self, one: FeedSeries | None, failure: Failure) -> None:
        self.metrics.errors.labels("exchange").inc()
        where = {"symbol": one.symbol, "tf": one.tf} if one else {"stage": "start"}
        if one is not None:
            self.states[one.name].last_error = f"{failure.error}: {failure.message[:200]}"
        level = log.warning if failure.transient else log.error
        level("feed.exchange_error", **where, **failure.fields(), attempt=self.backoff.attempt)

    def _redis_failed(self, one: FeedSeries | None, exc: RedisError) -> None:
        if isinstance(exc, NoPermissionError):
            if isinstance(exc, FatalError):
                raise exc
            raise ConfigError(f"feed: Redis refused a command: {exc}") from exc
        self.metrics.errors.labels("redis").inc()
        where = {"symbol": one.symbol, "tf": one.tf} if one else {"stage": "start"}
        if one is not None:
            self.states[one.name].last_error = f"redis: {exc}"
        log.warning("feed.redis_error", **where, error=repr(exc), attempt=self.backoff.attempt)

    # -- status ------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "exchange": self.feed.exchange,
            "rounds": self.rounds,
            "next_wake_ms": self.next_wake_ms,
            "series": {
                one.name: {
                    "pair": one.pair,
                    "newest_ts": state.cursor,
                    "published": state.published,
                    "last_error": state.last_error,
                }
                for one in self.series
                if (state := self.states.get(one.name)) is not None
            },
        }
