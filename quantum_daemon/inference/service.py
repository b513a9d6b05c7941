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
   path, nothing else is on it;
4. ``bookkeep`` then records the predictions (``records``), settles those
   whose horizon has elapsed (``rounds``, ``scoring``), applies one trust
   round per settling bar (``trust_store``: atomic, idempotent per model,
   version and bar), and compares each candidate's live record with its
   active version's (``scoring.shadow_verdict``): a candidate that beats it
   over ``[promotion] shadow_min_bars`` bars is promoted (``model.promoted``,
   reason ``shadow``; the old version is retired in the same registry write;
   of several winners, the lowest mean loss), one that has not after
   ``shadow_max_bars`` common bars is retired (``model.retired``, reason
   ``shadow``).

The worker holds each model's ``[inference] max_candidates`` newest
candidates; when it reports its models, older candidates are retired as
``superseded``. Every transition goes through the registry (outbox, exactly
once) and acts only on versions still candidates, so a replayed round emits
nothing twice.

The event loop never runs model code: the worker does (``worker.py``), and
the SQLite and registry files are touched in one I/O thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from quantum_daemon.core.ensemble import Signal, parse_signal, signal_fields, signal_json
from quantum_daemon.core.evaluation.backtest import cost_rate
from quantum_daemon.core.scoring import ShadowVerdict, shadow_outcome, shadow_verdict
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.timeframes import DAY_MS, timeframe_ms
from quantum_daemon.inference.messages import (
    ACTIVE,
    CANDIDATE,
    LoadedModel,
    LoadProblem,
    LoadReport,
    PredictAnswer,
    PredictRequest,
    RequestFailed,
    WorkerSettings,
)
from quantum_daemon.inference.metrics import InferenceMetrics
from quantum_daemon.inference.process import WorkerDied, WorkerLink
from quantum_daemon.inference.records import RECORDS_FILE, PredictionRecords
from quantum_daemon.inference.rounds import bars_needed, settle, trust_rounds
from quantum_daemon.inference.signals import decision_rows, prediction_rows, signals_of
from quantum_daemon.inference.timeline import WeightTimeline, rounds_in_history
from quantum_daemon.lifecycle.scheduler import ModelKey
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.events import Event, EventPublisher
from quantum_daemon.storage.registry.registry import SUPERSEDED, Registry, RegistryError
from quantum_daemon.storage.trust_store import TrustRound, TrustStore
from quantum_daemon.training.pool import RestartBudget
from quantum_daemon.web.api import int_query, json_response

log = get_logger()

T = TypeVar("T")
Series = tuple[str, str]
LoopFactory = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class Lifecycle(Protocol):
    """What inference tells the lifecycle step (``LifecycleService``)."""

    async def report_refused(self, model_id: str, version: str, reason: str) -> None:
        """Refuse the version in the registry, publish, reschedule."""

    async def refresh_models(self) -> None:
        """Re-read the registry after a transition made elsewhere."""


SHADOW_REASON = "shadow"
PUBLISH_ATTEMPTS = 3
SUMMARY_S = 60.0
PRUNE_EVERY_S = 3600.0


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
    rounds: int = 0
    promotions: int = 0
    shadow_retired: int = 0  # record ran out without beating the active version
    superseded: int = 0
    refused: int = 0


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
        self.cost_rate = cost_rate(cfg.evaluation.fee_bps, cfg.evaluation.slippage_bps)
        self.link = WorkerLink(
            self._worker_settings(tuple(family_classes)),
            self._work_put,
            RestartBudget(cfg.training.restart_budget, cfg.training.restart_window_s),
            on_state=lambda up: self.metrics.worker_up.set(1 if up else 0),
            on_restart=self.metrics.worker_restarts.inc,
        )
        self.totals = InferenceTotals()
        self.request_timeout_s = cfg.inference.request_timeout_s
        self.last_ts: dict[Series, int] = {}
        self.latest: dict[Series, Signal] = {}
        self.weights: dict[str, float] = {}
        self.timeline = WeightTimeline()  # the weights after each applied round, by bar time
        self.loaded: tuple[LoadedModel, ...] = ()
        self.live_families: tuple[str, ...] = ()
        self._live_changed = False
        self._recovered = False
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference-io")
        self._waiting: dict[Series, float] = {}  # series -> when its oldest unserved bar was stored
        self._wakeup = asyncio.Event()
        self._work: asyncio.Queue[Answered | LoadReport] = asyncio.Queue()
        self._handled_refusals: set[tuple[str, str]] = set()
        self._logged_errors: set[tuple[str, str]] = set()
        self._pruned_at = 0.0

    def _worker_settings(self, family_classes: tuple[tuple[str, str], ...]) -> WorkerSettings:
        fmt = self.cfg.logging.format
        return WorkerSettings(
            data_dir=str(self.cfg.storage.data_dir),
            store_path=str(self.store.path),
            horizon=self.cfg.evaluation.horizon,
            cost_rate=self.cost_rate,
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
        self.last_ts = await self._in_io(self.records.last_decisions)
        await self.link.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.close(grace_s=min(5.0, self.cfg.daemon.grace_s))
        await self._in_io(self.records.close)
        await asyncio.to_thread(self._io.shutdown, True)

    async def recover(self, stop: asyncio.Event | None = None) -> bool:
        """Start-up is recovery: resume each series after its newest signal
        (in the records, or only in the signal stream after a crash between
        publishing and recording), read the trust weights and rebuild their
        timeline from the trust history. Retries while
        Redis is away; False if ``stop`` came first."""
        if self._recovered:
            return True
        backoff = Backoff(cap=self.cfg.redis.reconnect_max_s)
        while not self._recovered:
            try:
                await self._resume_from_redis()
                self._seed_timeline(await self.trust.weights(), await self.trust.history())
                self._recovered = True
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "inference.recovery_waiting", error=str(exc), retry_in_s=round(delay, 3)
                )
                if stop is None:
                    await asyncio.sleep(delay)
                elif await sleep_or_stop(stop, delay):
                    return False
        resume = {f"{s}:{t}": ts for (s, t), ts in self.last_ts.items()}
        log.info("inference.started", resume=resume, pid=self.link.pid)
        return True

    async def _resume_from_redis(self) -> None:
        for series in self.configured_series():
            entries = await self.client.xrevrange(self.keys.signals(*series), count=1)
            if entries:
                ts = _signal_of(entries[0][1]).ts
                self.last_ts[series] = max(ts, self.last_ts.get(series, ts))

    def _seed_timeline(
        self, weights: dict[str, float], history: dict[str, list[tuple[int, float]]]
    ) -> None:
        """The rounds the history holds whole, then the current weights: at
        the newest answered bar's close when the history lacks them (no round
        can be later than that bar)."""
        self.timeline = WeightTimeline()
        for round_ts, after in rounds_in_history(history, weights):
            self.timeline.append(round_ts, after)
        if dict(self.timeline.newest) != weights:
            self.timeline.append(self._round_ts() or 0, weights)
        self.weights = weights

    def loops(self) -> dict[str, LoopFactory]:
        return {
            "inference-serve": self.serve,
            "inference-books": self.bookkeep,
            "inference-worker": self.link.supervise,
            "inference-summary": self.summarize,
        }

    # -- the ingest hook -----------------------------------------------------------
    def bars_stored(self, symbol: str, tf: str, count: int, last_ts: int | None = None) -> None:
        """Ingest's ``on_stored`` hook, on the event loop: new bars of a series."""
        if count > 0:
            self._waiting.setdefault((symbol, tf), self.clock())
            self._wakeup.set()

    # -- serving: the latency path ---------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        if not await self.recover(stop):
            return
        while not stop.is_set():
            if not self.link.ready.is_set():
                await _first(self.link.ready, stop)
            elif not self._waiting:
                self._wakeup.clear()
                await _first(self._wakeup, stop)
            else:
                await self.serve_next()

    async def serve_next(self) -> None:
        """Ask the worker about the series waiting longest and publish its signals."""
        series, stored_at = min(self._waiting.items(), key=lambda item: item[1])
        del self._waiting[series]
        request = self.request_for(series)
        self.totals.requests += 1
        try:
            reply = await self.link.ask(request, self.request_timeout_s)
        except WorkerDied as exc:
            self._waiting[series] = min(stored_at, self._waiting.get(series, stored_at))
            log.warning("inference.request_lost", symbol=series[0], tf=series[1], error=str(exc))
            return
        if isinstance(reply, RequestFailed):
            self.totals.failed_requests += 1
            log.warning(
                "inference.request_failed", symbol=series[0], tf=series[1], error=reply.error
            )
            return
        await self._deliver(series, reply, request, stored_at)

    def request_for(self, series: Series) -> PredictRequest:
        """The bars after the last one answered, with the trust weights as of
        them: the current weights, and the older ones only for bars that
        closed before rounds already applied (``timeline``)."""
        after_ts = self.last_ts.get(series)
        return PredictRequest(
            self.link.next_id(),
            *series,
            after_ts=after_ts,
            max_bars=self.cfg.inference.max_catch_up,
            weights=tuple(self.weights.items()),
            weights_at=self.timeline.for_request(after_ts, timeframe_ms(series[1]), self.weights),
        )

    async def _deliver(
        self, series: Series, answer: PredictAnswer, request: PredictRequest, stored_at: float
    ) -> None:
        """Publish the answer's signals, each bar pooled under its weights
        from the request: the worker's sizer sized that same pool, and the
        sizer is trained on the published signal (``recorded_signals``). A
        trust round that moved ``self.weights`` while the worker answered
        applies from the next request on."""
        latency_ms = (self.clock() - stored_at) * 1000.0
        threshold = self.cfg.evaluation.position_threshold
        weights = request.bar_weights(answer.ts)
        signals = signals_of(answer, weights, latency_ms, threshold)
        if signals:
            await self._publish(signals, stored_at)
        if answer.ts:
            self.last_ts[series] = answer.ts[-1]
        self.metrics.worker_seconds.observe(answer.worker_s)
        self.metrics.worker_cpu_seconds.observe(answer.cpu_s)
        self._note_errors(answer)
        self._work_put(Answered(answer, tuple(signals)))

    async def _publish(self, signals: list[Signal], stored_at: float) -> None:
        key = self.keys.signals(signals[0].symbol, signals[0].tf)
        maxlen = self.cfg.inference.signals_maxlen
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for signal in signals:
                        pipe.xadd(key, _fields(signal), maxlen=maxlen, approximate=True)
                    await pipe.execute()
                break
            except (RedisError, OSError) as exc:
                log.warning("signal.publish_failed", attempt=attempt, error=str(exc))
                if attempt == PUBLISH_ATTEMPTS:
                    log.error("signal.dropped", stream=key, bars=[s.ts for s in signals])
                    return
                await asyncio.sleep(0.05 * attempt)
        self._published(signals, self.clock() - stored_at)

    def _published(self, signals: list[Signal], seconds: float) -> None:
        last = signals[-1]
        self.latest[(last.symbol, last.tf)] = last
        self.totals.signals += len(signals)
        self.metrics.signals.labels(last.symbol, last.tf).inc(len(signals))
        for signal in signals:
            self.metrics.observe_latency(seconds)
            log.debug(
                "signal.published",
                symbol=signal.symbol,
                tf=signal.tf,
                ts=signal.ts,
                mu=signal.mu,
                p_up=signal.p_up,
                position=signal.position,
                latency_ms=round(signal.latency_ms, 3),
            )

    def _note_errors(self, answer: PredictAnswer) -> None:
        for model_id, error in answer.errors:
            self.metrics.model_errors.labels(ModelKey.parse(model_id).family).inc()
            if (model_id, error) not in self._logged_errors:  # once per distinct error
                self._logged_errors.add((model_id, error))
                log.warning("inference.model_failed", model_id=model_id, error=error)

    # -- bookkeeping: records, scores, trust, shadow ----------------------------------
    def _work_put(self, item: Answered | LoadReport) -> None:
        self._work.put_nowait(item)

    async def bookkeep(self, stop: asyncio.Event) -> None:
        """Handle answers and load reports in order; on stop, finish what is queued."""
        while (item := await self._next_work(stop)) is not None:
            await self.handle_work(item)

    async def _next_work(self, stop: asyncio.Event) -> Answered | LoadReport | None:
        if self._work.empty() and not stop.is_set():
            getter = asyncio.ensure_future(self._work.get())
            halt = asyncio.ensure_future(stop.wait())
            await asyncio.wait({getter, halt}, return_when=asyncio.FIRST_COMPLETED)
            halt.cancel()
            if getter.done():
                return getter.result()
            getter.cancel()
        return None if self._work.empty() else self._work.get_nowait()

    async def handle_work(self, item: Answered | LoadReport) -> None:
        try:
            if isinstance(item, LoadReport):
                await self._models_changed(item)
            else:
                await self._book(item)
        except (RedisError, OSError) as exc:  # what was not scored now is scored next time
            log.warning("inference.bookkeeping_failed", error=f"{type(exc).__name__}: {exc}")

    async def _book(self, item: Answered) -> None:
        answer = item.answer
        await self._align_trust()
        step = timeframe_ms(answer.tf)
        predictions = prediction_rows(answer, step)
        await self._in_io(self.records.record, predictions, decision_rows(item.signals))
        self.totals.predictions += len(predictions)
        for m in answer.models:
            self.metrics.predictions.labels(m.family, m.stage).inc(len(answer.ts))
        if answer.ts:
            await self.score_series(answer.symbol, answer.tf, answer.ts[-1])

    async def score_series(self, symbol: str, tf: str, upto_ts: int) -> None:
        """Settle the series' predictions due by bar ``upto_ts``: one trust
        round per settling bar, then the shadow comparisons."""
        step = timeframe_ms(tf)
        due = await self._in_io(self.records.due, symbol, tf, step, upto_ts)
        if not due:
            return
        start, end = bars_needed(due, step)
        bars = await self._in_io(self.store.read_bars, symbol, tf, start, end)
        settled = settle(due, bars, self.cost_rate)
        for round_ts, scores in trust_rounds(due, settled, step):
            self._trust_moved(await self.trust.apply(scores, self.live_families, round_ts))
            self.totals.rounds += 1
        await self._in_io(self.records.settle, settled)
        for p, s in zip(due, settled, strict=True):
            if s.loss is None:
                self.metrics.voided.inc()
                self.totals.void += 1
            else:
                self.metrics.scored.labels(p.family, p.stage).inc()
                self.totals.scored += 1
        await self._judge_shadow(sorted({p.model_id for p in due if p.stage == CANDIDATE}))

    async def _judge_shadow(self, model_ids: list[str]) -> None:
        """Each model's loaded candidates against its loaded active version."""
        for model_id in model_ids:
            of_model = [m for m in self.loaded if m.model_id == model_id]
            active = next((m for m in of_model if m.stage == ACTIVE), None)
            candidates = [m for m in of_model if m.stage == CANDIDATE]
            if active is not None and candidates:
                await self._judge_candidates(active, candidates)

    async def _judge_candidates(self, active: LoadedModel, candidates: list[LoadedModel]) -> None:
        """Expire the candidates whose record ran out, then promote the best winner."""
        min_bars = self.cfg.promotion.shadow_min_bars
        active_losses = await self._in_io(self.records.losses, active.model_id, active.version)
        verdicts: dict[str, ShadowVerdict] = {}
        for candidate in candidates:
            losses = await self._in_io(self.records.losses, candidate.model_id, candidate.version)
            verdicts[candidate.version] = shadow_verdict(losses, active_losses, min_bars)
        best, expired = shadow_outcome(verdicts, self.cfg.promotion.shadow_max_bars)
        by_version = {c.version: c for c in candidates}
        for version in expired:
            await self._expire(by_version[version], active, verdicts[version])
        if best is not None:
            await self._promote(by_version[best], active, verdicts[best])

    async def _promote(
        self, candidate: LoadedModel, active: LoadedModel, verdict: ShadowVerdict
    ) -> None:
        model_id = candidate.model_id
        try:
            events = await self._in_io(
                self.registry.promote_candidate,
                model_id,
                candidate.version,
                active.version,
                SHADOW_REASON,
            )
        except RegistryError as exc:  # the registry moved on meanwhile (an operator)
            log.warning("inference.shadow_promotion_refused", model_id=model_id, error=str(exc))
            return
        if not events:  # no longer a candidate, or another version is active: a stale round
            return
        # until the worker reports again, this model has no active version to judge against
        self.loaded = tuple(m for m in self.loaded if m not in (candidate, active))
        self.totals.promotions += 1
        self.metrics.promotions.inc()
        log.info(
            "model.promoted",
            model_id=model_id,
            version=candidate.version,
            replaced=active.version,
            reason=SHADOW_REASON,
            bars=verdict.bars,
            candidate_loss=round(verdict.candidate_loss, 6),
            active_loss=round(verdict.active_loss, 6),
        )
        await self._transitioned(model_id, events)

    async def _expire(
        self, candidate: LoadedModel, active: LoadedModel, verdict: ShadowVerdict
    ) -> None:
        """Retire a candidate whose shadow record reached ``shadow_max_bars``
        common bars without beating the active version (only while that
        version is still the active one)."""
        model_id = candidate.model_id
        detail = (
            f"mean loss {verdict.candidate_loss:.6f} vs {verdict.active_loss:.6f} "
            f"of {active.version} over {verdict.bars} common bars"
        )
        try:
            events = await self._in_io(
                self.registry.retire_candidate,
                model_id,
                candidate.version,
                active.version,
                SHADOW_REASON,
                detail,
            )
        except RegistryError as exc:  # the registry moved on meanwhile (the version is gone)
            log.warning("inference.shadow_retirement_refused", model_id=model_id, error=str(exc))
            return
        if not events:  # no longer a candidate, or another version is active: a stale round
            return
        self.loaded = tuple(m for m in self.loaded if m != candidate)
        self.totals.shadow_retired += 1
        self.metrics.retirements.labels(SHADOW_REASON).inc()
        log.info(
            "model.retired",
            model_id=model_id,
            version=candidate.version,
            reason=SHADOW_REASON,
            detail=detail,
        )
        await self._transitioned(model_id, events)

    async def _retire_superseded(self) -> None:
        """Retire every model's candidates beyond its ``max_candidates`` newest."""
        keep = self.cfg.inference.max_candidates
        for model_id in await self._in_io(self.registry.model_ids):
            events = await self._in_io(self.registry.retire_superseded, model_id, keep)
            for event in events:
                self.totals.superseded += 1
                self.metrics.retirements.labels(SUPERSEDED).inc()
                log.info(
                    "model.retired",
                    model_id=model_id,
                    version=event.data["version"],
                    reason=SUPERSEDED,
                )
            if events:
                await self._transitioned(model_id, events)

    async def _transitioned(self, model_id: str, events: list[Event]) -> None:
        """Publish a shadow transition's events and tell the lifecycle."""
        await self._publish_events(model_id, events)
        if self.lifecycle is not None:
            await self.lifecycle.refresh_models()

    async def _models_changed(self, report: LoadReport) -> None:
        self.loaded = report.loaded
        for stage in (ACTIVE, CANDIDATE):
            self.metrics.models_loaded.labels(stage).set(
                sum(1 for m in report.loaded if m.stage == stage)
            )
        for problem in report.problems:
            if (
                problem.refused
                and (problem.model_id, problem.version) not in self._handled_refusals
            ):
                await self._refuse(problem)
        await self._retire_superseded()
        live = tuple(sorted({m.family for m in report.loaded if m.stage == ACTIVE}))
        if live != self.live_families:
            self.live_families = live
            self._live_changed = True
            log.info("trust.live_families", families=list(live))
        await self._align_trust()

    async def _align_trust(self) -> None:
        """Write the weights of a new live set (families joined or left), at
        the close of the newest bar answered: trust history is in bar time,
        so before the first bar the change waits for it."""
        round_ts = self._round_ts()
        if not self._live_changed or round_ts is None:
            return
        self._trust_moved(await self.trust.set_live(self.live_families, round_ts))
        self._live_changed = False

    def _trust_moved(self, result: TrustRound) -> None:
        """A round was applied: its weights are the current ones, and the
        weights as of the bars closing from its time on (``timeline``)."""
        self.weights = dict(result.after)
        self.timeline.append(result.round_ts, self.weights)

    async def _refuse(self, problem: LoadProblem) -> None:
        """A version whose artifacts failed their checksum in the worker: the
        registry refuses it (``model.load_refused``; retired if it was live),
        through the lifecycle when there is one (it reschedules the model)."""
        self._handled_refusals.add((problem.model_id, problem.version))
        self.totals.refused += 1
        if self.lifecycle is not None:
            await self.lifecycle.report_refused(problem.model_id, problem.version, problem.reason)
            return
        log.error(
            "model.load_refused",
            model_id=problem.model_id,
            version=problem.version,
            reason=problem.reason,
        )
        events = await self._in_io(
            self.registry.refuse, problem.model_id, problem.version, problem.reason
        )
        await self._publish_events(problem.model_id, events)

    async def _publish_events(self, model_id: str, events: list[Event]) -> None:
        """Publish a transition's events now and confirm them in the outbox
        (idempotent: the lifecycle's flusher may publish them too)."""
        try:
            for event in events:
                await self.publisher.publish(event)
            await self._in_io(self.registry.confirm_events, model_id, [e.event_id for e in events])
        except (RedisError, OSError) as exc:  # they wait in the outbox for the flusher
            log.warning("events.publish_deferred", model_id=model_id, error=str(exc))

    def _round_ts(self) -> int | None:
        """Close time of the newest bar answered."""
        closes = [ts + timeframe_ms(tf) for (_, tf), ts in self.last_ts.items()]
        return max(closes) if closes else None

    # -- periodic summary and pruning ----------------------------------------------
    async def summarize(self, stop: asyncio.Event) -> None:
        while not await sleep_or_stop(stop, SUMMARY_S):
            self.log_summary()
            if self.clock() - self._pruned_at >= PRUNE_EVERY_S and self.last_ts:
                self._pruned_at = self.clock()
                before = max(self.last_ts.values()) - prediction_retention_ms(self.cfg)
                pruned = await self._in_io(self.records.prune, before)
                log.debug("inference.pruned", predictions=pruned)

    def log_summary(self) -> None:
        window = self.metrics.latency_window
        log.info(
            "inference.summary",
            latency_p50_ms=round(window.quantile(0.5) * 1000, 3),
            latency_p99_ms=round(window.quantile(0.99) * 1000, 3),
            live_families=list(self.live_families),
            models=len(self.loaded),
            **asdict(self.totals),
        )

    # -- deterministic mode (tests, benchmarks) ------------------------------------------
    async def run_until_idle(self, timeout_s: float = 120.0) -> None:
        """Serve and keep the books until no series waits and nothing is queued."""
        async with asyncio.timeout(timeout_s):
            await self.recover()
            while self._waiting or not self._work.empty() or not self.link.ready.is_set():
                if self.link.died.is_set():
                    raise WorkerDied("the worker died (no supervisor runs in this mode)")
                if not self.link.ready.is_set():
                    await _first(self.link.ready, self.link.died)
                elif not self._work.empty():
                    await self.handle_work(self._work.get_nowait())
                else:
                    await self.serve_next()

    # -- views -------------------------------------------------------------------------
    def configured_series(self) -> list[Series]:
        cfg = self.cfg
        pairs = [(s, t) for s in cfg.ingest.symbols for t in cfg.ingest.timeframes]
        pairs += [(s, t) for s in cfg.models.symbols for t in cfg.models.timeframes]
        return sorted(set(pairs))

    def status(self) -> dict[str, Any]:
        window = self.metrics.latency_window
        return {
            "summary": (
                f"{len(self.loaded)} models loaded, {len(self.live_families)} families live, "
                f"{self.totals.signals} signals, {self.totals.scored} scored"
            ),
            "worker": {
                "pid": self.link.pid,
                "ready": self.link.ready.is_set(),
                "restarts": self.link.restarts,
            },
            "models": [asdict(m) for m in self.loaded],
            "live_families": list(self.live_families),
            "weights": self.weights,
            "latency_ms": {
                "p50": round(window.quantile(0.5) * 1000, 3),
                "p99": round(window.quantile(0.99) * 1000, 3),
            },
            "series": {
                f"{s}:{t}": {"last_ts": ts, "waiting": (s, t) in self._waiting}
                for (s, t), ts in self.last_ts.items()
            },
            "backlog": self._work.qsize(),
            "totals": asdict(self.totals),
        }

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/trust", self.trust_view), web.get("/api/signals", self.signals_view)]

    async def trust_view(self, request: web.Request) -> web.StreamResponse:
        """Current weights, their bounded history and each family's last updates."""
        events = int_query(request, "events", 10, 0, 100)
        if events is None:
            return json_response({"error": "events must be an integer in [0, 100]"}, 400)
        try:
            snapshot = await self.trust.snapshot(events_per_family=events)
        except (RedisError, OSError) as exc:
            return json_response({"error": f"redis unavailable: {exc}"}, 503)
        body = snapshot.as_json() | {
            "live_families": list(self.live_families),
            "learning_rate": self.cfg.trust.learning_rate,
            "share": self.cfg.trust.share,
        }
        return json_response(body)

    async def signals_view(self, request: web.Request) -> web.StreamResponse:
        """The latest signal and the last ``n`` of each series (``symbol``, ``tf`` filter)."""
        n = int_query(request, "n", 10, 1, 1000)
        if n is None:
            return json_response({"error": "n must be an integer in [1, 1000]"}, 400)
        symbol, tf = request.query.get("symbol"), request.query.get("tf")
        series = sorted(set(self.configured_series()) | set(self.last_ts))
        body: dict[str, Any] = {}
        try:
            for s, t in series:
                if symbol in (None, s) and tf in (None, t):
                    entries = await self.client.xrevrange(self.keys.signals(s, t), count=n)
                    recent = [signal_json(_signal_of(fields)) for _, fields in entries or ()]
                    body[f"{s}:{t}"] = {"latest": recent[0] if recent else None, "recent": recent}
        except (RedisError, OSError) as exc:
            return json_response({"error": f"redis unavailable: {exc}"}, 503)
        return json_response({"n": n, "signals": body})

    async def _in_io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)


def _signal_of(fields: Any) -> Signal:
    return parse_signal(fields)


def _fields(signal: Signal) -> Any:
    return signal_fields(signal)


async def _first(event: asyncio.Event, other: asyncio.Event) -> None:
    """Wait until either event is set."""
    if event.is_set() or other.is_set():
        return
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(other.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def prediction_retention_ms(cfg: Config) -> int:
    """How far behind the newest bar settled predictions are kept: ``[inference]
    retention_days``, stretched where a shadow period on the longest timeframe
    needs longer (``shadow_max_bars`` plus the horizon), so that a candidate's
    record can always reach the expiry (90 days hold only 90 daily bars)."""
    longest = max((timeframe_ms(tf) for tf in cfg.models.timeframes), default=0)
    shadow_ms = (cfg.promotion.shadow_max_bars + cfg.evaluation.horizon + 1) * longest
    return max(cfg.inference.retention_days * DAY_MS, shadow_ms)
