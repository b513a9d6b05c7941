"""Prometheus metrics of live inference, on the daemon's registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from quantum_daemon.runtime.telemetry import LagWindow

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class InferenceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency_window = LagWindow(size=2000)
        self.latency = Histogram(
            "quantum_signal_latency_seconds",
            "From a bar stored by ingest to its signal published",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.worker_seconds = Histogram(
            "quantum_inference_worker_seconds",
            "Time the inference worker spent on one request",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.worker_cpu_seconds = Histogram(
            "quantum_inference_worker_cpu_seconds",
            "CPU time the inference worker spent on one request",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.signals = Counter(
            "quantum_signals", "Signals published", ["symbol", "tf"], registry=registry
        )
        self.predictions = Counter(
            "quantum_predictions",
            "Live predictions recorded",
            ["family", "stage"],
            registry=registry,
        )
        self.scored = Counter(
            "quantum_predictions_scored",
            "Live predictions scored against the realized outcome",
            ["family", "stage"],
            registry=registry,
        )
        self.voided = Counter(
            "quantum_predictions_void",
            "Predictions never scored: the bar that settles them is missing",
            registry=registry,
        )
        self.model_errors = Counter(
            "quantum_inference_model_errors",
            "Requests on which a live model failed",
            ["family"],
            registry=registry,
        )
        self.worker_up = Gauge(
            "quantum_inference_worker_up", "1 while the inference worker serves", registry=registry
        )
        self.worker_restarts = Counter(
            "quantum_inference_worker_restarts", "Inference workers replaced", registry=registry
        )
        self.models_loaded = Gauge(
            "quantum_inference_models_loaded",
            "Model versions held by the inference worker",
            ["stage"],
            registry=registry,
        )
        self.promotions = Counter(
            "quantum_shadow_promotions",
            "Candidates promoted on their live (shadow) record",
            registry=registry,
        )
        self.retirements = Counter(
            "quantum_shadow_retirements",
            "Candidates retired from shadow: record ran out (shadow) or superseded",
            ["reason"],
            registry=registry,
        )

    def observe_latency(self, seconds: float) -> None:
        self.latency.observe(seconds)
        self.latency_window.add(seconds)
