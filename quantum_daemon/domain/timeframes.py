"""Timeframes of bars: their names and lengths.

A bar with open time ``ts`` covers ``[ts, ts + tf)`` and is known only at its
close, ``ts + tf``.
"""

from __future__ import annotations

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
YEAR_MS = 365 * DAY_MS

TIMEFRAME_MS: dict[str, int] = {
    "1m": MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "1h": HOUR_MS,
    "4h": 4 * HOUR_MS,
    "1d": DAY_MS,
}


class UnknownTimeframe(ValueError):
    """A timeframe name that is not one of ``TIMEFRAME_MS``."""


def timeframe_ms(tf: str) -> int:
    """Length of one bar of timeframe ``tf`` in milliseconds."""
    try:
        return TIMEFRAME_MS[tf]
    except KeyError:
        raise UnknownTimeframe(
            f"unknown timeframe {tf!r}; expected one of {list(TIMEFRAME_MS)}"
        ) from None


def bars_per_year(tf: str) -> float:
    """Number of bars in a (365-day) year: the annualization factor (8,760 for 1h)."""
    return YEAR_MS / timeframe_ms(tf)


def on_grid(ts: int, tf: str) -> bool:
    """Whether an open time lies on the timeframe's UTC grid."""
    return ts % timeframe_ms(tf) == 0
