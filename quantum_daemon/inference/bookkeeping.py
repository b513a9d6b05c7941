"""Bookkeeping: what follows a published signal, off the latency path.

Answers and load reports are handled in order. An answer's predictions are
recorded (``records``); those whose horizon has elapsed are settled
(``rounds``, ``scoring``) with one trust round per settling bar
(``trust_store``: atomic, idempotent per model, version and bar), and then
the shadow comparisons run (``shadow``). A load report updates the models
held, refuses versions whose artifacts failed their checksum, retires
superseded candidates and aligns the trust weights with the live families.
Every minute a summary is logged; every hour old settled predictions are
pruned.

At most ``MAX_ANSWERS_WAITING`` answers, and at most ``MAX_BARS_WAITING``
bars in them, wait for bookkeeping: beyond that, serving waits for room
(``hand_over``). When bookkeeping falls behind, the next requests then catch
up on more bars each (``max_catch_up``), fewer and larger answers, instead
of a queue that grows without bound (the soak saw the daemon's memory climb
by 780 MB/h that way). The bound in bars is what bounds the memory: 32
answers of ``max_catch_up`` bars each held 32,000 signals.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict

from redis.exceptions import RedisError

from quantum_daemon.core.evaluation.backtest import cost_rate
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.stages import Stage
from quantum_daemon.domain.timeframes import DAY_MS, timeframe_ms
from quantum_daemon.inference.context import Answered, InferenceState, IoThread, Transitions
from quantum_daemon.inference.decay import DecayWatch
from quantum_daemon.inference.messages import LoadProblem, LoadReport
from quantum_daemon.inference.metrics import InferenceMetrics
from quantum_daemon.inference.rounds import bars_needed, settle, trust_rounds
from quantum_daemon.inference.shadow import ShadowReferee
from quantum_daemon.inference.signals import decision_rows, prediction_rows
from quantum_daemon.runtime.aio import next_until_stopped, sleep_or_stop, wait_first
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.prediction_records import PredictionRecords
from quantum_daemon.storage.trust_store import TrustStore

log = get_logger()

SUMMARY_S = 60.0
MAX_ANSWERS_WAITING = 32
MAX_BARS_WAITING = 2_000  # an answer larger than this goes in alone
PRUNE_EVERY_S = 3600.0

Work = Answered | LoadReport


class Bookkeeper:
    """Records, scores, trust rounds and model reports; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        state: InferenceState,
        store: BarStore,
        records: PredictionRecords,
        trust: TrustStore,
        io: IoThread,
        transitions: Transitions,
        metrics: InferenceMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.store = store
        self.records = records
        self.trust = trust
        self.io = io
        self.transitions = transitions
        self.metrics = metrics
        self.clock = clock
        self.cost_rate = cost_rate(cfg.evaluation.fee_bps, cfg.evaluation.slippage_bps)
        self.shadow = ShadowReferee(cfg, state, records, io, transitions, metrics)
        self.work: asyncio.Queue[Work] = asyncio.Queue()
        self.answers_waiting = 0
        self.bars_waiting = 0
        self._room = asyncio.Event()
        self._room.set()
        self._live_changed = False
        self._handled_refusals: set[tuple[str, str]] = set()
        self._pruned_at = 0.0
        self.decay = DecayWatch(cfg, state, store, records, io, transitions)

    # -- the queue ---------------------------------------------------------------
    def put(self, item: LoadReport) -> None:
        """A load report: queued at once (they are few, and come from the worker link)."""
        self.work.put_nowait(item)

    async def hand_over(self, item: Answered) -> None:
        """An answer, once there is room for it (``MAX_ANSWERS_WAITING``,
        ``MAX_BARS_WAITING``)."""
        bars = len(item.answer.ts)
        while not self._room_for(bars):
            self._room.clear()
            await wait_first(self._room)
        self.answers_waiting += 1
        self.bars_waiting += bars
        self.work.put_nowait(item)

    def _room_for(self, bars: int) -> bool:
        if self.answers_waiting >= MAX_ANSWERS_WAITING:
            return False
        return self.answers_waiting == 0 or self.bars_waiting + bars <= MAX_BARS_WAITING

    async def bookkeep(self, stop: asyncio.Event) -> None:
        """Handle answers and load reports in order; on stop, finish what is queued."""
        while (item := await next_until_stopped(self.work, stop)) is not None:
            await self.handle_work(item)

    async def handle_work(self, item: Work) -> None:
        try:
            if isinstance(item, LoadReport):
                await self._models_changed(item)
            else:
                await self._book(item)
        except (RedisError, OSError, sqlite3.OperationalError) as exc:
            # what was not scored now is scored next time; an answer whose
            # records could not be written (a full or failing disk under
            # predictions.sqlite3) is not recorded: those bars are not scored
            log.warning("inference.bookkeeping_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if isinstance(item, Answered):
                self.answers_waiting -= 1
                self.bars_waiting -= len(item.answer.ts)
                self._room.set()

    # -- answers -------------------------------------------------------------------
    async def _book(self, item: Answered) -> None:
        answer = item.answer
        await self.align_trust()
        step = timeframe_ms(answer.tf)
        predictions = prediction_rows(answer, step)
        await self.io.run(self.records.record, predictions, decision_rows(item.signals))
        self.state.totals.predictions += len(predictions)
        for m in answer.models:
            self.metrics.predictions.labels(m.family, m.stage).inc(len(answer.ts))
        if answer.ts:
            await self.score_series(answer.symbol, answer.tf, answer.ts[-1])

    async def score_series(self, symbol: str, tf: str, upto_ts: int) -> None:
        """Settle the series' predictions due by bar ``upto_ts``: one trust
        round per settling bar, then the shadow comparisons."""
        step = timeframe_ms(tf)
        due = await self.io.run(self.records.due, symbol, tf, step, upto_ts)
        if not due:
            return
        start, end = bars_needed(due, step)
        bars = await self.io.run(self.store.read_bars, symbol, tf, start, end)
        settled = settle(due, bars, self.cost_rate, self.cfg.evaluation.position_threshold)
        totals = self.state.totals
        for round_ts, scores in trust_rounds(due, settled, step):
            self.state.trust_moved(
                await self.trust.apply(scores, self.state.live_families, round_ts)
            )
            totals.rounds += 1
        await self.io.run(self.records.settle, settled, due)
        for p, s in zip(due, settled, strict=True):
            if s.loss is None:
                self.metrics.voided.inc()
                totals.void += 1
                continue
            self.metrics.scored.labels(p.family, p.stage).inc()
            totals.scored += 1
            await self.decay.observe_loss(p, s.loss, step)
        await self.shadow.judge(self.shadow.models_to_judge())
        await self.shadow.retire_stale(symbol, tf, upto_ts)
        await self.decay.score_ensemble(symbol, tf, upto_ts)

    # -- load reports ----------------------------------------------------------------
    async def _models_changed(self, report: LoadReport) -> None:
        self.state.loaded = report.loaded
        self.decay.keep_only({(m.model_id, m.version) for m in report.loaded})
        for stage in (Stage.ACTIVE, Stage.CANDIDATE):
            self.metrics.models_loaded.labels(stage).set(
                sum(1 for m in report.loaded if m.stage == stage)
            )
        for problem in report.problems:
            if (
                problem.refused
                and (problem.model_id, problem.version) not in self._handled_refusals
            ):
                await self._refuse(problem)
        await self.shadow.retire_superseded()
        live = tuple(sorted({m.family for m in report.loaded if m.stage == Stage.ACTIVE}))
        if live != self.state.live_families:
            self.state.live_families = live
            self._live_changed = True
            log.info("trust.live_families", families=list(live))
        await self.align_trust()

    async def align_trust(self) -> None:
        """Write the weights of a new live set (families joined or left), at
        the close of the newest bar answered: trust history is in bar time,
        so before the first bar the change waits for it."""
        round_ts = self.state.round_ts()
        if not self._live_changed or round_ts is None:
            return
        self.state.trust_moved(await self.trust.set_live(self.state.live_families, round_ts))
        self._live_changed = False

    async def _refuse(self, problem: LoadProblem) -> None:
        """A version whose artifacts failed their checksum in the worker: the
        registry refuses it (``model.load_refused``; retired if it was live),
        through the lifecycle when there is one (it reschedules the model)."""
        self._handled_refusals.add((problem.model_id, problem.version))
        self.state.totals.refused += 1
        lifecycle = self.transitions.lifecycle
        if lifecycle is not None:
            await lifecycle.report_refused(problem.model_id, problem.version, problem.reason)
            return
        log.error(
            "model.load_refused",
            model_id=problem.model_id,
            version=problem.version,
            reason=problem.reason,
        )
        registry = self.transitions.registry
        events = await self.io.run(
            registry.refuse, problem.model_id, problem.version, problem.reason
        )
        await self.transitions.publish(problem.model_id, events)

    # -- periodic summary and pruning ----------------------------------------------
    async def summarize(self, stop: asyncio.Event) -> None:
        while not await sleep_or_stop(stop, SUMMARY_S):
            self.log_summary()
            if self.clock() - self._pruned_at >= PRUNE_EVERY_S and self.state.last_ts:
                self._pruned_at = self.clock()
                before = max(self.state.last_ts.values()) - prediction_retention_ms(self.cfg)
                pruned = await self.io.run(self.records.prune, before)
                trimmed = await self.io.run(
                    self.records.prune_records,
                    self.cfg.promotion.record_bars,
                    max(timeframe_ms(tf) for _, tf in self.state.last_ts),
                )
                log.debug("inference.pruned", predictions=pruned, record_rows=trimmed)

    def log_summary(self) -> None:
        window = self.metrics.latency_window
        log.info(
            "inference.summary",
            latency_p50_ms=round(window.quantile(0.5) * 1000, 3),
            latency_p99_ms=round(window.quantile(0.99) * 1000, 3),
            live_families=list(self.state.live_families),
            models=len(self.state.loaded),
            **asdict(self.state.totals),
        )


def prediction_retention_ms(cfg: Config) -> int:
    """How far behind the newest bar settled predictions are kept: ``[inference]
    retention_days``, stretched where a shadow period on the longest timeframe
    needs longer (``shadow_max_bars`` plus the horizon), so that a candidate's
    record can always reach the expiry (90 days hold only 90 daily bars)."""
    longest = max((timeframe_ms(tf) for tf in cfg.models.timeframes), default=0)
    shadow_ms = (cfg.promotion.shadow_max_bars + cfg.evaluation.horizon + 1) * longest
    return max(cfg.inference.retention_days * DAY_MS, shadow_ms)
