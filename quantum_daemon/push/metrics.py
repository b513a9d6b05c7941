"""Prometheus metrics of the webhook deliveries, on the daemon's registry.
No URL is a label: a URL may hold a credential."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.outcomes = Counter(
            "quantum_webhook_deliveries",
            "Events handled per URL: delivered, filtered out, dead-lettered",
            ["outcome"],
            registry=r,
        )
        self.retries = Counter(
            "quantum_webhook_retries", "Attempts after a delivery's first", registry=r
        )
        self.in_flight = Gauge(
            "quantum_webhook_in_flight", "Deliveries under way (all URLs)", registry=r
        )
