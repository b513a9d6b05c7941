"""One batch of stream entries: decoded, stored, and what to acknowledge.

``BatchProcessor.process`` runs in the store's single writer thread: it
decodes every entry, stores the bars in one transaction and returns the
``BatchOutcome`` (ids to acknowledge, entries to dead-letter, gaps). The
event loop then writes the dead letters and acknowledgements.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quantum_daemon.ingest.decode import (
    DLQ_VALUE_PREVIEW,
    Reason,
    Rejection,
    Series,
    decode_bar,
    fields_json,
)
from quantum_daemon.ingest.gaps import Gap, GapTracker
from quantum_daemon.store import Bar, BarStore

Fields = Mapping[bytes, bytes] | None
Entry = tuple[bytes, Fields]  # (entry id, fields) as redis-py returns them


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
        origins: list[tuple[bytes, bytes, Fields]] = []
        dead: list[DeadLetter] = []
        acks: dict[bytes, list[bytes]] = {}
        for part in batch.parts:
            acks[part.stream] = self._decode_part(part, bars, origins, dead)
        result = self.store.insert_bars(bars)
        for conflict in result.conflicts:
            stream, entry_id, fields = origins[conflict.index]
            dead.append(DeadLetter.conflict(stream, entry_id, fields, conflict.stored))
        stored = result.inserted_bars(bars)
        return BatchOutcome(
            size=batch.size,
            acks=acks,
            dead_letters=dead,
            inserted=_count_series(stored),
            duplicates=result.duplicates,
            gaps=self.gaps.observe(stored),
        )

    def _decode_part(
        self,
        part: StreamEntries,
        bars: list[Bar],
        origins: list[tuple[bytes, bytes, Fields]],
        dead: list[DeadLetter],
    ) -> list[bytes]:
        """Append the part's bars (with where each came from) and rejections;
        return the ids of all its entries."""
        stream, series, limit = part.stream, part.series, self.max_entry_bytes
        ids: list[bytes] = []
        for entry_id, fields in part.entries:
            ids.append(entry_id)
            decoded = decode_bar(series, fields, limit)
            if type(decoded) is Bar:
                bars.append(decoded)
                origins.append((stream, entry_id, fields))
            else:
                dead.append(DeadLetter.rejected(stream, entry_id, fields, decoded))  # type: ignore[arg-type]
        return ids


def _count_series(bars: Any) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for bar in bars:
        key = (bar.symbol, bar.tf)
        counts[key] = counts.get(key, 0) + 1
    return counts
