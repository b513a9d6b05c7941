"""Where an SSE client is in every signal stream: the event id of
``GET /api/signals/stream`` (docs/push.md).

The signals of several series interleave on one connection, and a Redis
entry id only orders the entries of its own stream; so the id of an event
is the whole cursor after it: ``SYMBOL:TF/ENTRY-ID`` for every stream of the
connection whose position is past its start, joined by ``,``
(``BTCUSDT:1h/1717430400123-0,ETHUSDT:1h/1717430400456-0``). A reconnect
that sends it back as ``Last-Event-ID`` continues every stream right after
the entry it had; a stream the cursor does not name starts at its
beginning (it had nothing when the cursor was made). A connection for one
series also takes a bare entry id (``1717430400123-0``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from quantum_daemon.domain.errors import BadDataError
from quantum_daemon.domain.ids import check_symbol, check_timeframe, shown

Series = tuple[str, str]
START = "0-0"
MAX_CURSOR_CHARS = 16_384
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


class BadCursor(BadDataError):
    """A ``Last-Event-ID`` that this endpoint did not write."""


def entry_key(entry_id: str) -> tuple[int, int]:
    """An entry id as numbers, in stream order."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def format_cursor(positions: Mapping[Series, str]) -> str:
    return ",".join(
        f"{symbol}:{tf}/{entry}"
        for (symbol, tf), entry in sorted(positions.items())
        if entry != START
    )


def parse_cursor(text: str, only: Series | None = None) -> dict[Series, str]:
    """The positions in ``text``; ``only``: the one series of the connection,
    for which a bare entry id is its position."""
    text = text.strip()
    if len(text) > MAX_CURSOR_CHARS:
        raise BadCursor(f"last event id is longer than {MAX_CURSOR_CHARS} characters")
    if not text:
        return {}
    if only is not None and _ENTRY_ID.fullmatch(text):
        return {only: text}
    return dict(_position(part) for part in text.split(","))


def _position(part: str) -> tuple[Series, str]:
    series, slash, entry = part.partition("/")
    symbol, colon, tf = series.partition(":")
    if not slash or not colon:
        raise BadCursor(f"last event id part {shown(part)} is not SYMBOL:TF/ENTRY-ID")
    if not _ENTRY_ID.fullmatch(entry):
        raise BadCursor(f"entry id {shown(entry)} is not MS-SEQ")
    return (check_symbol(symbol), check_timeframe(tf)), entry
