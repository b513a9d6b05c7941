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

``RecordedSignals`` (``domain.signals``) is frozen numpy arrays sorted by
``ts``, one entry per bar: where a bar was published twice (a replay, a
restart), the later entry in the stream wins. This module talks to Redis;
the worker side imports only ``domain.signals``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from quantum_daemon.core.ensemble import field_text
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.signals import RecordedSignals

PAGE = 500  # entries per XRANGE call: the event loop is free between pages
MAX_TS = 2**63 - 1  # the arrays are int64: a larger ts would raise, not be skipped


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
    flat = "status" in text and field_text(text["status"]) == "flat"
    mu_key, p_up_key = ("shadow_mu", "shadow_p_up") if flat else ("mu", "p_up")
    try:
        ts = int(field_text(text["ts"]))
        mu, p_up = float(field_text(text[mu_key])), float(field_text(text[p_up_key]))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if not (0 <= ts <= MAX_TS and math.isfinite(mu) and 0.0 <= p_up <= 1.0):
        return None
    return ts, mu, p_up
