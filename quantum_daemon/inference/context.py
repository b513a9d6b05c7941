"""What the parts of the inference step share: its state, its I/O thread and
the publishing of registry transitions (see ``service``).

Serving, bookkeeping, the shadow referee and the views each hold the same
``InferenceState``; only the event loop touches it, so it needs no lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError

from quantum_daemon.core.ensemble import Signal, parse_signal, signal_fields
from quantum_daemon.core.promotion import GateResult, RecordEvidence
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.events import Event
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.inference.messages import LoadedModel, PredictAnswer
from quantum_daemon.inference.timeline import WeightTimeline
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.events import EventPublisher
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.storage.trust_store import TrustRound

log = get_logger()

T = TypeVar("T")
Series = tuple[str, str]


class Lifecycle(Protocol):
    """What inference tells the lifecycle step (``LifecycleService``)."""

    async def report_refused(self, model_id: str, version: str, reason: str) -> None:
        """Refuse the version in the registry, publish, reschedule."""

    async def refresh_models(self) -> None:
        """Re-read the registry after a transition made elsewhere."""

    def request_retrain(self, model_id: str, trigger: str) -> None:
        """Queue a training of the model (``drift``)."""


@dataclass(frozen=True)
class Answered:
    """A worker's answer and the signals published from it: bookkeeping's input."""

    answer: PredictAnswer
    signals: tuple[Signal, ...]


@dataclass
class InferenceTotals:
    requests: int = 0
    failed_requests: int = 0
    signals: int = 0
    predictions: int = 0
    scored: int = 0
    void: int = 0
    drifts: int = 0
    stale: int = 0
    rounds: int = 0
    promotions: int = 0
    shadow_retired: int = 0  # record ran out without beating the active version
    superseded: int = 0
    refused: int = 0


@dataclass
class InferenceState:
    """Where each series stands, the trust weights and the models the worker holds."""

    last_ts: dict[Series, int] = field(default_factory=dict)  # newest bar answered
    latest: dict[Series, Signal] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    timeline: WeightTimeline = field(default_factory=WeightTimeline)  # weights by bar time
    loaded: tuple[LoadedModel, ...] = ()
    live_families: tuple[str, ...] = ()
    totals: InferenceTotals = field(default_factory=InferenceTotals)
    # each judged model's record rule and evidence, for the status and dashboard
    records: dict[str, tuple[GateResult, RecordEvidence | None]] = field(default_factory=dict)
    killed: dict[Series, str] = field(default_factory=dict)  # kill switch on: why

    def round_ts(self) -> int | None:
        """Close time of the newest bar answered."""
        closes = [ts + timeframe_ms(tf) for (_, tf), ts in self.last_ts.items()]
        return max(closes) if closes else None

    def trust_moved(self, result: TrustRound) -> None:
        """A round was applied: its weights are the current ones, and the
        weights as of the bars closing from its time on (``timeline``)."""
        self.weights = dict(result.after)
        self.timeline.append(result.round_ts, self.weights)


class IoThread:
    """The one thread that touches the SQLite records and the registry files."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference-io")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, True)


class Transitions:
    """Publishes the events of the registry transitions inference makes."""

    def __init__(
        self,
        registry: Registry,
        publisher: EventPublisher,
        io: IoThread,
        lifecycle: Lifecycle | None,
    ) -> None:
        self.registry = registry
        self.publisher = publisher
        self.io = io
        self.lifecycle = lifecycle

    async def publish(self, model_id: str, events: list[Event]) -> None:
        """Publish a transition's events now and confirm them in the outbox
        (idempotent: the lifecycle's flusher may publish them too)."""
        try:
            for event in events:
                await self.publisher.publish(event)
            await self.io.run(self.registry.confirm_events, model_id, [e.event_id for e in events])
        except (RedisError, OSError) as exc:  # they wait in the outbox for the flusher
            log.warning("events.publish_deferred", model_id=model_id, error=str(exc))

    async def transitioned(self, model_id: str, events: list[Event]) -> None:
        """Publish a shadow transition's events and tell the lifecycle."""
        await self.publish(model_id, events)
        if self.lifecycle is not None:
            await self.lifecycle.refresh_models()


def stream_signal(fields: Any) -> Signal:
    """A signal from a stream entry's fields (redis-py types them loosely)."""
    return parse_signal(fields)


def stream_fields(signal: Signal) -> Any:
    """A signal as the fields of a stream entry (redis-py types them strictly)."""
    return signal_fields(signal)


def configured_series(cfg: Config) -> list[Series]:
    """Every (symbol, timeframe) that ingest stores or a model serves."""
    pairs = [(s, t) for s in cfg.ingest.symbols for t in cfg.ingest.timeframes]
    pairs += [(s, t) for s in cfg.models.symbols for t in cfg.models.timeframes]
    multi = cfg.models.multi
    pairs += [(s, k.tf) for k in multi.keys() for s in multi.symbols_of(k.model_id)]
    return sorted(set(pairs))
