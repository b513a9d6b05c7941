"""What ingest did: running totals, Prometheus metrics and the log lines of
each batch (one summary line, never one per bar at INFO)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from quantum_daemon.ingest.batch import BatchOutcome, ReadBatch
from quantum_daemon.ingest.metrics import IngestMetrics
from quantum_daemon.runtime.logs import get_logger

log = get_logger()


@dataclass
class IngestTotals:
    """Running totals since start (the status API and tests read them)."""

    entries: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0
    gaps: int = 0
    missing: int = 0
    claimed: int = 0
    batches: int = 0


class Ledger:
    """Counts every acknowledged batch into the totals and the metrics and
    logs it."""

    def __init__(self, metrics: IngestMetrics) -> None:
        self.metrics = metrics
        self.totals = IngestTotals()
        self._entries_at_last_progress = 0

    def count_claimed(self, n: int) -> None:
        if n:
            self.totals.claimed += n
            self.metrics.claimed.inc(n)

    def record(self, batch: ReadBatch, outcome: BatchOutcome) -> None:
        rejected = outcome.rejected_by_reason
        self._count(outcome, rejected)
        self._measure(batch, outcome, rejected)
        self._log(batch, outcome, rejected)

    def _count(self, outcome: BatchOutcome, rejected: dict[str, int]) -> None:
        t = self.totals
        t.batches += 1
        t.entries += outcome.size
        t.inserted += sum(outcome.inserted.values())
        t.duplicates += outcome.duplicates
        t.rejected += len(outcome.dead_letters)
        t.conflicts += rejected.get("conflict", 0)
        t.gaps += len(outcome.gaps)
        t.missing += sum(gap.missing for gap in outcome.gaps)

    def _measure(self, batch: ReadBatch, outcome: BatchOutcome, rejected: dict[str, int]) -> None:
        m = self.metrics
        m.batch_entries.inc(outcome.size)
        m.batch_seconds.observe(time.monotonic() - batch.read_at)
        for (symbol, tf), n in outcome.inserted.items():
            m.ingested.labels(symbol, tf).inc(n)
        if outcome.duplicates:
            m.duplicates.inc(outcome.duplicates)
        for reason, n in rejected.items():
            m.rejected.labels(reason).inc(n)
        if rejected.get("conflict"):
            m.conflicts.inc(rejected["conflict"])
        for gap in outcome.gaps:
            m.gaps.labels(gap.symbol, gap.tf).inc()
            m.missing.labels(gap.symbol, gap.tf).inc(gap.missing)

    def _log(self, batch: ReadBatch, outcome: BatchOutcome, rejected: dict[str, int]) -> None:
        log.debug(
            "bars.ingested",
            source=batch.source,
            entries=outcome.size,
            inserted=sum(outcome.inserted.values()),
            duplicates=outcome.duplicates,
            rejected=len(outcome.dead_letters),
        )
        if outcome.dead_letters:
            first = outcome.dead_letters[0]
            log.warning(
                "bars.rejected",
                reasons=rejected,
                example_stream=first.stream.decode(errors="replace"),
                example_id=first.entry_id.decode(errors="replace"),
                example_detail=first.detail,
            )
        for gap in outcome.gaps:
            log.warning(
                "bars.gap",
                symbol=gap.symbol,
                tf=gap.tf,
                missing=gap.missing,
                from_ts=gap.first_missing_ts,
                to_ts=gap.last_missing_ts,
            )

    def log_progress(self, interval_s: float) -> None:
        """One INFO line with the totals, if entries arrived since the last one."""
        done = self.totals.entries - self._entries_at_last_progress
        if done:
            self._entries_at_last_progress = self.totals.entries
            log.info(
                "ingest.progress",
                recent_entries=done,  # not "entries": the totals below carry that key
                per_s=round(done / interval_s),
                **vars(self.totals),
            )
