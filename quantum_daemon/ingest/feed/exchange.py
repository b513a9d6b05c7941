"""The feed's one door to ccxt: the only module that imports it.

ccxt's sync API runs in one worker thread of its own, so nothing it does
(HTTP, JSON of a market list, the rate limiter's sleeps: ``enableRateLimit``)
blocks the event loop; the loop awaits each call and stops waiting at once
when the feed stops (a call in flight ends within ``request_timeout_s``).
Waiting on a call is not idling: a call that hangs makes the loop stalled.

Errors, by what the feed should do (``Failure``):

- transient: ccxt's ``OperationFailed`` family (``NetworkError``,
  ``ExchangeNotAvailable``, ``RateLimitExceeded``, ``DDoSProtection``,
  ``RequestTimeout``, ...) and any answer with an HTTP status of 500 or
  more: retried with backoff, whenever they happen;
- refused: ``AuthenticationError``, ``BadRequest`` (``BadSymbol``: a pair the
  exchange does not list), ``NotSupported``: at start a configuration error
  (exit 78); later (a pair delisted) retried with backoff, never a crash;
- any other ``ccxt.BaseError``: retried with backoff.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import ccxt

from quantum_daemon.domain.config import FeedConfig
from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.ingest.feed.plan import FeedSeries, Row

T = TypeVar("T")

REFUSED = (ccxt.AuthenticationError, ccxt.BadRequest, ccxt.NotSupported)
ExchangeError = ccxt.BaseError  # what the feed catches around every call


class Stopped(Exception):
    """The feed stopped while a call to the exchange was in flight."""


@dataclass(frozen=True)
class Failure:
    """An exchange error as the feed logs and handles it."""

    error: str  # ccxt's class name
    status: int | None  # the HTTP status, when an answer came
    message: str
    transient: bool

    def fields(self) -> dict[str, Any]:
        return {"error": self.error, "status": self.status, "message": self.message[:300]}


def classify(exc: ccxt.BaseError) -> Failure:
    status = http_status(exc)
    refused = isinstance(exc, REFUSED) and not (status is not None and status >= 500)
    return Failure(type(exc).__name__, status, str(exc), transient=not refused)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a ccxt error: ccxt raises inside its handler of
    ``requests``' ``HTTPError``, whose response holds it."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(getattr(seen, "response", None), "status_code", None)
        if isinstance(code, int):
            return code
        seen = seen.__cause__ or seen.__context__
    return None


def with_host(urls: Any, base: str) -> Any:
    """``urls`` (ccxt's ``urls['api']``: a string or nested dicts of them)
    with the scheme and host of every URL replaced by those of ``base``."""
    if isinstance(urls, dict):
        return {key: with_host(value, base) for key, value in urls.items()}
    if isinstance(urls, str) and "://" in urls:
        target, url = urlsplit(base), urlsplit(urls)
        return urlunsplit((target.scheme, target.netloc, url.path, url.query, url.fragment))
    return urls


def make_exchange(cfg: FeedConfig) -> ccxt.Exchange:
    if cfg.exchange not in ccxt.exchanges:
        raise ConfigError(f"config key 'feed.exchange': ccxt has no exchange {cfg.exchange!r}")
    exchange: ccxt.Exchange = getattr(ccxt, cfg.exchange)(
        {"enableRateLimit": True, "timeout": int(cfg.request_timeout_s * 1000)}
    )
    if all(":" not in pair for pair in cfg.symbols):
        _spot_markets_only(exchange)
    if cfg.api_url:
        exchange.urls["api"] = with_host(exchange.urls["api"], cfg.api_url)
    return exchange


def _spot_markets_only(exchange: ccxt.Exchange) -> None:
    """Spot pairs only: load spot markets only where the exchange lets us
    choose (Binance: one exchangeInfo request instead of three)."""
    exchange.options["defaultType"] = "spot"
    markets = exchange.options.get("fetchMarkets")
    if isinstance(markets, dict) and "types" in markets:
        exchange.options["fetchMarkets"] = {**markets, "types": ["spot"]}


class ExchangeClient:
    """One ccxt exchange and the thread that drives it."""

    def __init__(self, cfg: FeedConfig) -> None:
        self.cfg = cfg
        self.exchange = make_exchange(cfg)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"feed-{cfg.exchange}")

    async def load_markets(self, stop: asyncio.Event) -> None:
        await self._call(stop, self.exchange.load_markets)

    def check_series(self, series: Sequence[FeedSeries]) -> None:
        """Every pair listed and every timeframe offered, else ``ConfigError``
        naming it (after ``load_markets``)."""
        for one in series:
            if one.pair not in self.exchange.markets:
                raise ConfigError(
                    f"config key 'feed.symbols': {self.cfg.exchange} does not list {one.pair!r}"
                )
            if one.tf not in (self.exchange.timeframes or {}):
                raise ConfigError(
                    f"config key 'feed.timeframes': {self.cfg.exchange} has no {one.tf!r} bars"
                )
        if not self.exchange.has.get("fetchOHLCV"):
            raise ConfigError(f"config key 'feed.exchange': {self.cfg.exchange} has no OHLCV")

    async def fetch_page(
        self, stop: asyncio.Event, series: FeedSeries, since_ms: int, limit: int
    ) -> list[Row]:
        """Up to ``limit`` bars from ``since_ms`` on (the last may be forming)."""
        fetch = self.exchange.fetch_ohlcv
        rows: list[Row] = await self._call(stop, fetch, series.pair, series.tf, since_ms, limit)
        return rows

    async def _call(self, stop: asyncio.Event, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the exchange's thread. The wait does not beat the
        loop's pulse: a call hung past ``[daemon] stall_s`` shows as a stall
        (ccxt ends a request after ``request_timeout_s``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.run_in_executor(
            self._thread, functools.partial(fn, *args)
        )
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([future, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not future.done():
            future.cancel()  # the thread finishes its request; nobody reads it
            raise Stopped()
        result: T = future.result()
        return result

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        session = getattr(self.exchange, "session", None)
        if session is not None:
            session.close()
