"""The feed's decisions, pure (no clock, no I/O: ``now_ms`` is passed in).

A bar with open time ``ts`` is closed at ``ts + tf``; the feed publishes a
bar only when its close is at or before now, so a kline still forming (the
last one an exchange answers) never leaves the feed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Row = Sequence[float]  # ccxt's OHLCV row: [ts_ms, open, high, low, close, volume]


@dataclass(frozen=True)
class FeedSeries:
    """One series fed: the exchange's pair, the stream's symbol, the timeframe."""

    pair: str  # ccxt's unified symbol, "BTC/USDT"
    symbol: str  # the bar streams' symbol, "BTCUSDT"
    tf: str
    tf_ms: int
    stream: str

    @property
    def name(self) -> str:
        return f"{self.symbol}:{self.tf}"


def closed_rows(rows: Iterable[Row], since_ms: int, tf_ms: int, now_ms: int) -> list[Row]:
    """The rows to publish from one answer: complete (six values, none
    missing), on the timeframe's grid, at or after ``since_ms``, closed by
    ``now_ms``, in time order, each ts once."""
    seen: set[int] = set()
    kept: list[Row] = []
    for row in rows:
        if len(row) < 6 or any(value is None for value in row[:6]):
            continue
        ts = int(row[0])
        if ts < since_ms or ts % tf_ms or ts + tf_ms > now_ms or ts in seen:
            continue
        seen.add(ts)
        kept.append(row)
    return sorted(kept, key=lambda row: row[0])


def floor_to_grid(ms: int, tf_ms: int) -> int:
    return ms - ms % tf_ms


def start_cursor(
    newest_known: Iterable[int | None],
    since_ms: int | None,
    backfill_bars: int,
    now_ms: int,
    tf_ms: int,
) -> int:
    """Open time of the bar a series resumes after (the next one asked for is
    the cursor plus one bar): the newest bar already stored or published,
    else one bar before ``since_ms``, else ``backfill_bars`` closed bars back."""
    known = [ts for ts in newest_known if ts is not None and ts + tf_ms <= now_ms]
    if known:
        return max(known)
    if since_ms is not None:
        return floor_to_grid(since_ms + tf_ms - 1, tf_ms) - tf_ms
    newest_closed = floor_to_grid(now_ms, tf_ms) - tf_ms
    return newest_closed - backfill_bars * tf_ms


def next_wanted(cursor_ms: int, tf_ms: int) -> int:
    return cursor_ms + tf_ms


def has_closed_bar(cursor_ms: int, tf_ms: int, now_ms: int) -> bool:
    """Whether a bar after the cursor has closed (one is there to ask for)."""
    return next_wanted(cursor_ms, tf_ms) + tf_ms <= now_ms


def next_close_ms(now_ms: int, tf_ms: Iterable[int]) -> int:
    """The first bar close of any of the timeframes strictly after now."""
    return min(floor_to_grid(now_ms, tf) + tf for tf in tf_ms)
