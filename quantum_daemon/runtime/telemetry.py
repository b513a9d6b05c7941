"""Prometheus metrics of the daemon process, on a registry of its own.

Other components (ingest, training) register their metrics on the same
``registry`` so that ``/metrics`` serves them all.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double every counter for no use of ours.
disable_created_metrics()

LOOP_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class LagWindow:
    """The last ``size`` loop-lag samples, for exact recent quantiles."""

    size: int = 3000
    samples: deque[float] = field(default_factory=deque)

    def add(self, value: float) -> None:
        self.samples.append(value)
        if len(self.samples) > self.size:
            self.samples.popleft()

    def quantile(self, q: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class DaemonMetrics:
    """The daemon's own metrics: uptime, Redis reconnects, event-loop lag."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.started = time.monotonic()
        self.lag_window = LagWindow()
        self.uptime = Gauge(
            "quantum_uptime_seconds", "Seconds since the daemon started", registry=self.registry
        )
        self.uptime.set_function(lambda: time.monotonic() - self.started)
        self.ready = Gauge("quantum_ready", "1 when the daemon is ready", registry=self.registry)
        self.redis_up = Gauge("quantum_redis_up", "1 when Redis answers", registry=self.registry)
        self.redis_reconnects = Counter(
            "quantum_redis_reconnects",
            "Times Redis came back after a failure",
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "quantum_event_loop_lag_seconds",
            "Event-loop scheduling lag",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag_p99 = Gauge(
            "quantum_event_loop_lag_p99_seconds",
            "p99 of the last 3000 loop-lag samples",
            registry=self.registry,
        )
        self.loop_lag_p99.set_function(lambda: self.lag_window.quantile(0.99))
        self.loop_lag_p50 = Gauge(
            "quantum_event_loop_lag_p50_seconds",
            "p50 of the last 3000 loop-lag samples",
            registry=self.registry,
        )
        self.loop_lag_p50.set_function(lambda: self.lag_window.quantile(0.50))

    def observe_lag(self, seconds: float) -> None:
        self.loop_lag.observe(seconds)
        self.lag_window.add(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
