"""Serving: the latency path from a stored bar to its published signal.

Ingest calls ``bars_stored`` when it committed bars of a series; ``serve``
takes the series waiting longest and those waiting with it (``next_batch``:
the series that closed on the same bar, up to ``[inference] batch_bars``
stored bars in all: a batch's time in the worker grows with its bars, and a
catch-up series brings up to ``max_catch_up`` of them), sends the worker
one ``PredictBatch`` of their ``PredictRequest``s (each: the bars after the
last one answered, with the trust weights as of those bars, ``timeline``),
pools each bar's active forecasters under that bar's weights from its
request (``signals.signals_of``) and adds the signals to
``quantum:signals:{SYMBOL}:{TF}`` with their latency, the whole batch in one
pipeline. Nothing else is on this path: the answers are handed to
bookkeeping afterwards.

Why batches: at 100 series closing at once, one request per series paid a
pipe round trip, a registry check, a Redis round trip and a loop wake-up
each (scripts/bench_scale.py measures both ways, ``batch_bars = 1`` being
the old way); a lone series still goes as a batch of one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from quantum_daemon.core.ensemble import Signal
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.inference.context import Answered, InferenceState, Series
from quantum_daemon.inference.fenced import FENCE_REFUSED, queue_publish
from quantum_daemon.inference.messages import PredictAnswer, PredictRequest, RequestFailed
from quantum_daemon.inference.metrics import InferenceMetrics
from quantum_daemon.inference.process import WorkerDied, WorkerLink
from quantum_daemon.inference.signals import signals_of
from quantum_daemon.runtime.aio import wait_first
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

PUBLISH_ATTEMPTS = 3


class Server:
    """Asks the worker about waiting series and publishes their signals."""

    def __init__(
        self,
        cfg: Config,
        client: aioredis.Redis,
        state: InferenceState,
        link: WorkerLink,
        metrics: InferenceMetrics,
        hand_over: Callable[[Answered], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.keys = Keys(cfg.redis.prefix)
        self.state = state
        self.link = link
        self.metrics = metrics
        self.hand_over = hand_over
        self.clock = clock
        self.request_timeout_s = cfg.inference.request_timeout_s
        self.waiting: dict[Series, float] = {}  # series -> when its oldest unserved bar was stored
        self.waiting_bars: dict[Series, int] = {}  # series -> bars stored since it was served
        self._wakeup = asyncio.Event()
        self._logged_errors: set[tuple[str, str]] = set()
        # The lease value of a series this daemon owns, None when it owns it
        # not (runtime.ownership); unset: publish unfenced (one daemon's parts).
        self.fence: Callable[[Series], str | None] | None = None

    def bars_stored(self, symbol: str, tf: str, count: int, last_ts: int | None = None) -> None:
        """Ingest's ``on_stored`` hook, on the event loop: new bars of a series."""
        if count > 0:
            self.waiting.setdefault((symbol, tf), self.clock())
            self.waiting_bars[(symbol, tf)] = self.waiting_bars.get((symbol, tf), 0) + count
            self._wakeup.set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve waiting series while the worker is ready, until ``stop``."""
        while not stop.is_set():
            if not self.link.ready.is_set():
                await wait_first(self.link.ready, stop)
            elif not self.waiting:
                self._wakeup.clear()
                await wait_first(self._wakeup, stop)
            else:
                await self.serve_next()

    async def serve_next(self) -> None:
        """Ask the worker about the series waiting longest, and those waiting
        with it (``next_batch``), in one batch; publish their signals."""
        batch = self.next_batch()
        if not batch:
            return
        requests = tuple(self.request_for(series) for series, _, _ in batch)
        self.state.totals.requests += len(requests)
        try:
            replies = await self.link.ask_batch(requests, self.request_timeout_s)
        except WorkerDied as exc:
            for series, stored_at, count in batch:
                self.waiting[series] = min(stored_at, self.waiting.get(series, stored_at))
                self.waiting_bars[series] = self.waiting_bars.get(series, 0) + count
            log.warning("inference.request_lost", series=len(batch), error=str(exc))
            return
        delivered: list[tuple[Answered, float]] = []
        for (series, stored_at, _), request, reply in zip(batch, requests, replies, strict=True):
            if isinstance(reply, RequestFailed):
                self.state.totals.failed_requests += 1
                log.warning(
                    "inference.request_failed", symbol=series[0], tf=series[1], error=reply.error
                )
                continue
            delivered.append((self._answered(series, reply, request, stored_at), stored_at))
        await self._publish([(a.signals, stored_at) for a, stored_at in delivered if a.signals])
        for answered, _ in delivered:  # bookkeeping may make this wait: after publishing
            await self.hand_over(answered)

    def next_batch(self) -> list[tuple[Series, float, int]]:
        """(series, stored_at, bars) of waiting series, oldest first, taken
        off ``waiting``: at least one, then more while their stored bars stay
        within ``[inference] batch_bars``."""
        batch: list[tuple[Series, float, int]] = []
        bars = 0
        for series, stored_at in sorted(self.waiting.items(), key=lambda item: item[1]):
            count = self.waiting_bars.get(series, 1)
            if batch and bars + count > self.cfg.inference.batch_bars:
                break
            batch.append((series, stored_at, count))
            bars += count
        for series, _, _ in batch:
            del self.waiting[series]
            self.waiting_bars.pop(series, None)
        return batch

    def request_for(self, series: Series) -> PredictRequest:
        """The bars after the last one answered, with the trust weights as of
        them: the current weights, and the older ones only for bars that
        closed before rounds already applied (``timeline``)."""
        after_ts = self.state.last_ts.get(series)
        weights = self.state.weights
        return PredictRequest(
            self.link.next_id(),
            *series,
            after_ts=after_ts,
            max_bars=self.cfg.inference.max_catch_up,
            weights=tuple(weights.items()),
            weights_at=self.state.timeline.for_request(after_ts, timeframe_ms(series[1]), weights),
        )

    def _answered(
        self, series: Series, answer: PredictAnswer, request: PredictRequest, stored_at: float
    ) -> Answered:
        """The answer's signals, each bar pooled under its weights from the
        request: the worker's sizer sized that same pool, and the sizer is
        trained on the published signal (``recorded_signals``). A trust round
        that moved the weights while the worker answered applies from the
        next request on."""
        latency_ms = (self.clock() - stored_at) * 1000.0
        threshold = self.cfg.evaluation.position_threshold
        weights = request.bar_weights(answer.ts)
        killed = self.state.killed.get(series)
        signals = signals_of(answer, weights, latency_ms, threshold, killed)
        if answer.ts:
            self.state.last_ts[series] = answer.ts[-1]
        self.metrics.worker_seconds.observe(answer.worker_s)
        self.metrics.worker_cpu_seconds.observe(answer.cpu_s)
        self._note_errors(answer)
        return Answered(answer, tuple(signals))

    async def _publish(self, batch: list[tuple[tuple[Signal, ...], float]]) -> None:
        """Add the signals of a batch's series (each with the time its bars
        were stored) to their streams in one pipeline, each series' part
        fenced by its lease (``inference.fenced``)."""
        owned = []
        for signals, stored_at in batch:
            series = (signals[0].symbol, signals[0].tf)
            fence = "" if self.fence is None else self.fence(series)
            if fence is None:
                stream = self.keys.signals(*series)
                log.warning("signal.not_owner", stream=stream, bars=[s.ts for s in signals])
                continue
            owned.append((signals, stored_at, series, fence))
        if not owned:
            return
        maxlen = self.cfg.inference.signals_maxlen
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for signals, _, series, fence in owned:
                        lease, stream = self.keys.owner(*series), self.keys.signals(*series)
                        queue_publish(pipe, lease, stream, fence, signals, maxlen)
                    added = await pipe.execute()
                break
            except (RedisError, OSError) as exc:
                log.warning("signal.publish_failed", attempt=attempt, error=str(exc))
                if attempt == PUBLISH_ATTEMPTS:
                    for signals, _, series, _ in owned:
                        stream = self.keys.signals(*series)
                        log.error("signal.dropped", stream=stream, bars=[s.ts for s in signals])
                    return
                await asyncio.sleep(0.05 * attempt)
        published_at = self.clock()
        for (signals, stored_at, series, _), n in zip(owned, added, strict=True):
            stream = self.keys.signals(*series)
            if int(n) == FENCE_REFUSED:
                log.warning("signal.fenced", stream=stream, bars=[s.ts for s in signals])
                continue
            if int(n) < len(signals):
                log.info("signal.already_published", stream=stream, skipped=len(signals) - int(n))
            self._published(signals, published_at - stored_at)

    def _published(self, signals: tuple[Signal, ...], seconds: float) -> None:
        last = signals[-1]
        self.state.latest[(last.symbol, last.tf)] = last
        self.state.totals.signals += len(signals)
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
