"""Prometheus metrics of bar ingest, registered on the daemon's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    """Counters of what happened to entries, batch latency and consumer lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            "quantum_bars_ingested", "Bars stored", ["symbol", "tf"], registry=r
        )
        self.rejected = Counter(
            "quantum_bars_rejected", "Entries dead-lettered, by reason", ["reason"], registry=r
        )
        self.conflicts = Counter(
            "quantum_bars_conflicts", "Bars that differed from the stored bar", registry=r
        )
        self.duplicates = Counter(
            "quantum_bars_duplicates", "Re-delivered bars identical to the stored one", registry=r
        )
        self.gaps = Counter(
            "quantum_bars_gaps",
            "Bars that arrived after missing bars",
            ["symbol", "tf"],
            registry=r,
        )
        self.missing = Counter(
            "quantum_bars_missing", "Bars missing in those gaps", ["symbol", "tf"], registry=r
        )
        self.claimed = Counter(
            "quantum_ingest_claimed",
            "Pending entries recovered from this or claimed from dead consumers",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "quantum_ingest_batch_seconds",
            "From read to acknowledgement of one batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_entries = Counter(
            "quantum_ingest_entries",
            "Stream entries processed (stored, duplicate or rejected)",
            registry=r,
        )
        self.in_flight = Gauge(
            "quantum_ingest_in_flight_batches", "Batches read and not yet acknowledged", registry=r
        )
        self.lag = Gauge(
            "quantum_ingest_lag",
            "Entries of a stream not yet read by the group",
            ["stream"],
            registry=r,
        )
        self.pending = Gauge(
            "quantum_ingest_pending",
            "Entries read by the group and not yet acknowledged",
            ["stream"],
            registry=r,
        )
        self.redis_errors = Counter(
            "quantum_ingest_redis_errors", "Redis errors met by the ingest loops", registry=r
        )
        self.store_retries = Counter(
            "quantum_ingest_store_retries", "Store transactions retried after an error", registry=r
        )
