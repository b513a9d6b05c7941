"""Prometheus metrics of the feed, on the daemon's registry when it runs there."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class FeedMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.published = Counter(
            "quantum_feed_bars_published",
            "Closed bars the feed published",
            ["symbol", "tf"],
            registry=r,
        )
        self.errors = Counter(
            "quantum_feed_errors",
            "Exchange and Redis errors the feed retried",
            ["kind"],
            registry=r,
        )
        self.newest = Gauge(
            "quantum_feed_newest_bar_ts",
            "Open time (ms) of the newest bar published",
            ["symbol", "tf"],
            registry=r,
        )
