"""One batch of stream entries: decoded, stored, and what to acknowledge.

``BatchProcessor.process`` runs in the store's single writer thread: it
decodes every entry, stores the bars in one transaction and returns the
``BatchOutcome`` (ids to acknowledge, entries to dead-letter, gaps). The
event loop then writes the dead letters and acknowledgements.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from operator import itemgetter

from quantum_daemon.ingest.decode import (
    DLQ_VALUE_PREVIEW,
    RawFields,
    Reason,
    Rejection,
    Series,
    decode_bar,
    fields_json,
)
from quantum_daemon.ingest.gaps import Gap, GapTracker
from quantum_daemon.storage.bar_store import Bar, BarStore

Fields = RawFields
Entry = tuple[bytes, Fields]  # (entry id, fields) as Redis returns them
_SERIES = itemgetter(0, 1)  # (symbol, tf) of a Bar


@dataclass(frozen=True)
class StreamEntries:
    stream: bytes
    series: Series
    entries: list[Entry]


@dataclass(frozen=True)
class ReadBatch:
    """Entries read in one call; ``source`` is new, pending or claimed."""

    parts: list[StreamEntries]
    source: str = "new"
    read_at: float = 0.0

    @property
    def size(self) -> int:
        return sum(len(part.entries) for part in self.parts)


@dataclass(frozen=True)
class DeadLetter:
    """An entry for the DLQ stream."""

    stream: bytes
    entry_id: bytes
    reason: Reason
    detail: str
    fields: str  # JSON of the original fields
    stored: str | None = None  # JSON of the stored bar, for conflicts

    @classmethod
    def rejected(cls, stream: bytes, entry_id: bytes, fields: Fields, why: Rejection) -> DeadLetter:
        preview = DLQ_VALUE_PREVIEW if why.reason is Reason.TOO_LARGE else None
        return cls(stream, entry_id, why.reason, why.detail, fields_json(fields, preview))

    @classmethod
    def conflict(cls, stream: bytes, entry_id: bytes, fields: Fields, stored: Bar) -> DeadLetter:
        return cls(
            stream,
            entry_id,
            Reason.CONFLICT,
            "differs from the stored bar",
            fields_json(fields),
            json.dumps(stored.values()),
        )

    def as_fields(self) -> dict[str, str | bytes]:
        entry: dict[str, str | bytes] = {
            "stream": self.stream,
            "id": self.entry_id,
            "reason": self.reason.value,
            "detail": self.detail,
            "fields": self.fields,
        }
        if self.stored is not None:
            entry["stored"] = self.stored
        return entry


@dataclass(frozen=True)
class BatchOutcome:
    """What became of a batch, and what the event loop must still write."""

    size: int
    acks: dict[bytes, list[bytes]]
    dead_letters: list[DeadLetter]
    inserted: dict[tuple[str, str], int]
    duplicates: int
    gaps: list[Gap] = field(default_factory=list)

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for letter in self.dead_letters:
            counts[letter.reason.value] = counts.get(letter.reason.value, 0) + 1
        return counts


class BatchProcessor:
    """Decode, store, classify. Owned by the single store-writer thread."""

    def __init__(self, store: BarStore, max_entry_bytes: int) -> None:
        self.store = store
        self.max_entry_bytes = max_entry_bytes
        self.gaps = GapTracker()

    def seed(self) -> None:
        """Start gap detection from the newest stored bar of every series."""
        self.gaps = GapTracker(self.store.last_ts())

    def process(self, batch: ReadBatch) -> BatchOutcome:
        bars: list[Bar] = []
        dead: list[DeadLetter] = []
        now_ms = time.time_ns() // 1_000_000  # the wall clock, for ts_in_future
        for part in batch.parts:
            self._decode_part(part, bars, dead, now_ms)
        result = self.store.insert_bars(bars)
        if result.conflicts:
            origins = _origins(batch, dead)
            for conflict in result.conflicts:
                stream, entry_id, fields = origins[conflict.index]
                dead.append(DeadLetter.conflict(stream, entry_id, fields, conflict.stored))
        stored = result.inserted_bars(bars)
        return BatchOutcome(
            size=batch.size,
            acks={part.stream: [entry[0] for entry in part.entries] for part in batch.parts},
            dead_letters=dead,
            inserted=dict(Counter(map(_SERIES, stored))),
            duplicates=result.duplicates,
            gaps=self.gaps.observe(stored),
        )

    def _decode_part(
        self, part: StreamEntries, bars: list[Bar], dead: list[DeadLetter], now_ms: int
    ) -> None:
        """Append the part's bars to ``bars`` and its rejections to ``dead``."""
        stream, series, limit = part.stream, part.series, self.max_entry_bytes
        for entry_id, fields in part.entries:
            decoded = decode_bar(series, fields, limit, now_ms)
            if type(decoded) is Bar:
                bars.append(decoded)
            else:
                dead.append(DeadLetter.rejected(stream, entry_id, fields, decoded))  # type: ignore[arg-type]


def _origins(batch: ReadBatch, dead: list[DeadLetter]) -> list[tuple[bytes, bytes, Fields]]:
    """(stream, id, fields) of each decoded bar, in the order of the bars
    (rebuilt only for the rare batch with conflicts)."""
    rejected = {(letter.stream, letter.entry_id) for letter in dead}
    return [
        (part.stream, entry_id, fields)
        for part in batch.parts
        for entry_id, fields in part.entries
        if (part.stream, entry_id) not in rejected
    ]
