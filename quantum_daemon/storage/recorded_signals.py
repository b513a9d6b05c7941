"""The ensemble signals the daemon published, read back as arrays: ``rl_sizer``'s
training signal.

Every closed bar's entry on ``quantum:signals:{SYMBOL}:{TF}``
(``ensemble.signal_fields``) holds the trust-weighted ensemble of the models
that were active at that bar, each trained on bars before it: the recorded
signal is out of sample by construction, and it is the signal the sizer
meets live. ``read_recorded_signals`` pulls one series' stream in XRANGE
pages and keeps each entry's ``ts`` (bar open time, epoch ms), ``mu`` and
``p_up``; an entry without them, or with a number that does not parse or
is out of range, is skipped and counted, never raised. Only these three fields are
read (no JSON): a full stream of 10,000 entries takes about 0.1 s, in
slices of a few milliseconds between the awaited pages of ``PAGE`` entries.

``RecordedSignals`` is frozen numpy arrays sorted by ``ts``, one entry per
bar: where a bar was published twice (a replay, a restart), the later entry
in the stream wins. numpy only: the daemon imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from quantum_daemon.core.ensemble import field_text
from quantum_daemon.domain.keys import Keys

# The families trained on the recorded signal (they size it, they are not part of it).
SIGNAL_CONSUMERS = frozenset({"rl_sizer"})
PAGE = 500  # entries per XRANGE call: the event loop is free between pages
MAX_TS = 2**63 - 1  # the arrays are int64: a larger ts would raise, not be skipped


@dataclass(frozen=True, eq=False)
class RecordedSignals:
    """Per recorded bar, in ``ts`` order without repeats: ``mu`` and ``p_up``.
    ``skipped`` counts the stream entries that could not be read."""

    ts: np.ndarray
    mu: np.ndarray
    p_up: np.ndarray
    skipped: int = 0

    def __post_init__(self) -> None:
        n = self.ts.shape[0]
        if any(a.shape != (n,) for a in (self.ts, self.mu, self.p_up)):
            raise ValueError("ts, mu and p_up need one value per recorded bar")
        if n > 1 and not np.all(np.diff(self.ts) > 0):
            raise ValueError("ts must be strictly increasing; use from_rows")

    @classmethod
    def empty(cls, skipped: int = 0) -> RecordedSignals:
        return cls(np.empty(0, np.int64), np.empty(0), np.empty(0), skipped)

    @classmethod
    def from_rows(cls, rows: list[tuple[int, float, float]], skipped: int = 0) -> RecordedSignals:
        """From (ts, mu, p_up) rows in stream order: sorted by ``ts``, keeping
        the last row of each ``ts``."""
        if not rows:
            return cls.empty(skipped)
        ts = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.array([(r[1], r[2]) for r in rows], dtype=np.float64)
        order = np.argsort(ts, kind="stable")
        ts, values = ts[order], values[order]
        last_of_ts = np.append(ts[1:] != ts[:-1], True)
        return cls(ts[last_of_ts], values[last_of_ts, 0], values[last_of_ts, 1], skipped)

    def until(self, last_ts: int | None) -> RecordedSignals:
        """The signals of bars up to ``last_ts`` (none for None): what a job
        whose last bar opened at ``last_ts`` may see."""
        if last_ts is None:
            return RecordedSignals.empty(self.skipped)
        keep = self.ts <= last_ts
        return RecordedSignals(self.ts[keep], self.mu[keep], self.p_up[keep], self.skipped)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def positions(self, bar_ts: np.ndarray) -> np.ndarray:
        """For each bar open time, the index of its recorded signal, or -1."""
        bar_ts = np.asarray(bar_ts, dtype=np.int64)
        at = np.searchsorted(self.ts, bar_ts)
        inside = at < len(self)
        found = np.zeros(bar_ts.shape, dtype=bool)
        found[inside] = self.ts[at[inside]] == bar_ts[inside]
        return np.where(found, at, -1)

    def recorded_fraction(self, bar_ts: np.ndarray) -> float:
        """The share of these bars that have a recorded signal (0.0 for no bars)."""
        if np.asarray(bar_ts).size == 0:
            return 0.0
        return float(np.mean(self.positions(bar_ts) >= 0))


async def read_recorded_signals(
    client: aioredis.Redis, keys: Keys, symbol: str, tf: str, page: int = PAGE
) -> RecordedSignals:
    """The recorded signals of one series (empty if the stream does not exist).
    Redis errors propagate: the caller decides whether to go on without."""
    stream = keys.signals(symbol, tf)
    rows: list[tuple[int, float, float]] = []
    skipped = 0
    start: str = "-"
    while True:
        entries: Any = await client.xrange(stream, min=start, max="+", count=page)
        for _, fields in entries:
            row = signal_row(fields)
            if row is None:
                skipped += 1
            else:
                rows.append(row)
        if len(entries) < page:
            return RecordedSignals.from_rows(rows, skipped)
        start = "(" + field_text(entries[-1][0])


def signal_row(fields: Mapping[Any, Any]) -> tuple[int, float, float] | None:
    """(ts, mu, p_up) of one signal entry's fields (``str`` or ``bytes``), or
    None when one is missing or does not parse, ``ts`` is not an epoch-ms
    time an int64 holds, ``mu`` is not finite or ``p_up`` is outside [0, 1]."""
    text = {field_text(k): v for k, v in fields.items()}
    try:
        ts = int(field_text(text["ts"]))
        mu, p_up = float(field_text(text["mu"])), float(field_text(text["p_up"]))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if not (0 <= ts <= MAX_TS and math.isfinite(mu) and 0.0 <= p_up <= 1.0):
        return None
    return ts, mu, p_up
