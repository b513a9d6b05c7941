"""Live inference as one daemon step: bars in, signals out, trust and shadow
records kept (DESIGN §6, §7).

Per closed bar (docs/inference.md has the whole path):

1. ingest commits the bar and calls ``bars_stored`` (its ``on_stored`` hook):
   the series is marked as waiting, with the time it was stored;
2. ``serve`` sends the worker one ``PredictRequest`` for the series (the bars
   after the last one answered) with the trust weights as of those bars
   (``timeline``: the current weights, unless a catch-up bar closed before
   rounds already applied); the worker answers every live model's ``mu``,
   ``p_up`` and positions;
3. each bar's active forecasters' answers are pooled under that bar's
   weights from the request (``ensemble.combine``; the pool the worker's
   sizer sized, even if a trust round moved the weights meanwhile), the position is
   ``rl_sizer``'s when one is active, else the plain rule's
   (``ensemble.build_signal``), and the signal is added to
   ``quantum:signals:{SYMBOL}:{TF}`` with its latency: that is the latency
   path, nothing else is on it (``serving``);
4. ``bookkeep`` then records the predictions (``records``), settles those
   whose horizon has elapsed (``rounds``, ``scoring``), applies one trust
   round per settling bar (``trust_store``: atomic, idempotent per model,
   version and bar), and compares each candidate's live record with its
   active version's (``promotion.shadow_verdict``): a candidate that beats it
   over ``[promotion] shadow_min_bars`` bars is promoted (``model.promoted``,
   reason ``shadow``; the old version is retired in the same registry write;
   of several winners, the lowest mean loss), one that has not after
   ``shadow_max_bars`` common bars is retired (``model.retired``, reason
   ``shadow``) (``bookkeeping``, ``shadow``).

The worker holds each model's ``[inference] max_candidates`` newest
candidates; when it reports its models, older candidates are retired as
``superseded``. Every transition goes through the registry (outbox, exactly
once) and acts only on versions still candidates, so a replayed round emits
nothing twice.

The event loop never runs model code: the worker does (``worker.py``), and
the SQLite and registry files are touched in one I/O thread.

``InferenceService`` is the facade the daemon and the tests use: it wires
the parts (``serving``, ``bookkeeping``, ``shadow``, ``recovery``,
``views``) around one shared ``context.InferenceState``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from quantum_daemon.core.ensemble import Signal
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference.bookkeeping import Bookkeeper, Work, prediction_retention_ms
from quantum_daemon.inference.context import (
    Answered,
    InferenceState,
    InferenceTotals,
    IoThread,
    Lifecycle,
    Series,
    Transitions,
    configured_series,
)
from quantum_daemon.inference.messages import InferenceWorkerSettings, LoadedModel, PredictRequest
from quantum_daemon.inference.metrics import InferenceMetrics
from quantum_daemon.inference.process import WorkerDied, WorkerLink
from quantum_daemon.inference.recovery import Recovery
from quantum_daemon.inference.serving import Server
from quantum_daemon.inference.timeline import WeightTimeline
from quantum_daemon.inference.views import InferenceViews
from quantum_daemon.runtime.aio import wait_first
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.restarts import RestartBudget
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.events import EventPublisher
from quantum_daemon.storage.prediction_records import RECORDS_FILE, PredictionRecords
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.storage.trust_store import TrustStore

__all__ = [
    "Answered",
    "InferenceService",
    "InferenceTotals",
    "Lifecycle",
    "prediction_retention_ms",
]

log = get_logger()

T = TypeVar("T")
LoopFactory = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class InferenceService:
    """See the module docstring. An async context manager: entering starts the
    worker; ``loops()`` serve, keep the books, supervise and summarize."""

    def __init__(
        self,
        cfg: Config,
        client: aioredis.Redis,
        store: BarStore,
        metrics_registry: CollectorRegistry,
        *,
        registry: Registry | None = None,
        lifecycle: Lifecycle | None = None,
        family_classes: Iterable[tuple[str, str]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.store = store
        self.clock = clock
        self.keys = Keys(cfg.redis.prefix)
        self.registry = registry or Registry(cfg.storage.data_dir)
        self.lifecycle = lifecycle
        self.trust = TrustStore(client, self.keys, cfg.trust)
        self.publisher = EventPublisher(client, self.keys)
        self.metrics = InferenceMetrics(metrics_registry)
        self.records = PredictionRecords(cfg.storage.data_dir / RECORDS_FILE)
        self.state = InferenceState()
        self.io = IoThread()
        transitions = Transitions(self.registry, self.publisher, self.io, lifecycle)
        self.books = Bookkeeper(
            cfg,
            self.state,
            store,
            self.records,
            self.trust,
            self.io,
            transitions,
            self.metrics,
            clock=clock,
        )
        self.cost_rate = self.books.cost_rate
        self.link = WorkerLink(
            self._worker_settings(tuple(family_classes)),
            self.books.put,
            RestartBudget(cfg.training.restart_budget, cfg.training.restart_window_s),
            on_state=lambda up: self.metrics.worker_up.set(1 if up else 0),
            on_restart=self.metrics.worker_restarts.inc,
        )
        self.server = Server(
            cfg, client, self.state, self.link, self.metrics, self.books.hand_over, clock
        )
        self.recovery = Recovery(cfg, client, self.trust, self.state)
        self.views = InferenceViews(
            cfg, client, self.state, self.server, self.books, self.trust, self.metrics
        )

    def _worker_settings(
        self, family_classes: tuple[tuple[str, str], ...]
    ) -> InferenceWorkerSettings:
        fmt = self.cfg.logging.format
        return InferenceWorkerSettings(
            data_dir=str(self.cfg.storage.data_dir),
            store_path=str(self.store.path),
            horizon=self.cfg.evaluation.horizon,
            cost_rate=self.books.cost_rate,
            context_bars=self.cfg.inference.context_bars,
            max_candidates=self.cfg.inference.max_candidates,
            threads=self.cfg.inference.worker_threads,
            seed=self.cfg.models.seed,
            log_level=self.cfg.logging.level,
            log_format="json" if fmt == "auto" else fmt,
            family_classes=family_classes,
        )

    # -- start and stop --------------------------------------------------------
    async def __aenter__(self) -> InferenceService:
        """Start the worker (it loads the models meanwhile). The rest of
        start-up, reading where each series stopped, needs Redis: the serve
        loop does it first (the daemon starts without Redis)."""
        self.state.last_ts = await self.io.run(self.records.last_decisions)
        await self.link.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.close(grace_s=min(5.0, self.cfg.daemon.grace_s))
        await self.io.run(self.records.close)
        await self.io.close()

    async def recover(self, stop: asyncio.Event | None = None) -> bool:
        """Resume where the last run stopped (``recovery``), once; False if
        ``stop`` came first."""
        if self.recovery.done:
            return True
        if not await self.recovery.run(stop):
            return False
        resume = {f"{s}:{t}": ts for (s, t), ts in self.last_ts.items()}
        log.info("inference.started", resume=resume, pid=self.link.pid)
        return True

    def loops(self) -> dict[str, LoopFactory]:
        return {
            "inference-serve": self.serve,
            "inference-books": self.bookkeep,
            "inference-worker": self.link.supervise,
            "inference-summary": self.summarize,
        }

    # -- the loops ---------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        if await self.recover(stop):
            await self.server.serve(stop)

    async def bookkeep(self, stop: asyncio.Event) -> None:
        await self.books.bookkeep(stop)

    async def summarize(self, stop: asyncio.Event) -> None:
        await self.books.summarize(stop)

    # -- deterministic mode (tests, benchmarks) ------------------------------------------
    async def run_until_idle(self, timeout_s: float = 120.0) -> None:
        """Serve and keep the books until no series waits and nothing is queued."""
        work = self.books.work
        async with asyncio.timeout(timeout_s):
            await self.recover()
            while self.server.waiting or not work.empty() or not self.link.ready.is_set():
                if self.link.died.is_set():
                    raise WorkerDied("the worker died (no supervisor runs in this mode)")
                if not self.link.ready.is_set():
                    await wait_first(self.link.ready, self.link.died)
                elif not work.empty():
                    await self.handle_work(work.get_nowait())
                else:
                    await self.serve_next()

    # -- the parts' entry points -----------------------------------------------------
    def bars_stored(self, symbol: str, tf: str, count: int, last_ts: int | None = None) -> None:
        """Ingest's ``on_stored`` hook, on the event loop: new bars of a series."""
        self.server.bars_stored(symbol, tf, count, last_ts)

    async def serve_next(self) -> None:
        await self.server.serve_next()

    def request_for(self, series: Series) -> PredictRequest:
        return self.server.request_for(series)

    async def handle_work(self, item: Work) -> None:
        await self.books.handle_work(item)

    async def score_series(self, symbol: str, tf: str, upto_ts: int) -> None:
        await self.books.score_series(symbol, tf, upto_ts)

    async def _judge_shadow(self, model_ids: list[str]) -> None:
        await self.books.shadow.judge(model_ids)

    async def _retire_superseded(self) -> None:
        await self.books.shadow.retire_superseded()

    def log_summary(self) -> None:
        self.books.log_summary()

    def configured_series(self) -> list[Series]:
        return configured_series(self.cfg)

    def status(self) -> dict[str, Any]:
        return self.views.status()

    def routes(self) -> list[web.RouteDef]:
        return self.views.routes()

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.io.run(fn, *args)

    # -- the shared state ------------------------------------------------------------
    @property
    def totals(self) -> InferenceTotals:
        return self.state.totals

    @property
    def last_ts(self) -> dict[Series, int]:
        return self.state.last_ts

    @property
    def latest(self) -> dict[Series, Signal]:
        return self.state.latest

    @property
    def timeline(self) -> WeightTimeline:
        return self.state.timeline

    @property
    def live_families(self) -> tuple[str, ...]:
        return self.state.live_families

    @property
    def weights(self) -> dict[str, float]:
        return self.state.weights

    @weights.setter
    def weights(self, weights: dict[str, float]) -> None:
        self.state.weights = weights

    @property
    def loaded(self) -> tuple[LoadedModel, ...]:
        return self.state.loaded

    @loaded.setter
    def loaded(self, loaded: tuple[LoadedModel, ...]) -> None:
        self.state.loaded = loaded

    @property
    def request_timeout_s(self) -> float:
        return self.server.request_timeout_s

    @request_timeout_s.setter
    def request_timeout_s(self, seconds: float) -> None:
        self.server.request_timeout_s = seconds
