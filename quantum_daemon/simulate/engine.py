"""The loop on a simulated clock: the live path's decisions, bar by bar.

At each bar close ``t`` (in time order across the series):

1. the scheduler hears of the stored bar (``Scheduler.bars_stored``, ``tick``);
2. every live version (active or candidate) has its forecast for the bar
   (batch predictions, ``predict_job``), the ensemble pools the active
   forecasters under the trust weights of that moment and the signal takes
   the plain rule's position (``core.ensemble``), as the inference worker does;
3. the predictions due at this bar are settled (``inference.rounds.settle``),
   one trust round per settling bar (``trust_store.plan_round``), candidates'
   scores go to their shadow record and the shadow verdicts are applied
   (``scoring.shadow_verdict``, ``shadow_outcome``, the registry's
   ``promote_candidate`` / ``retire_candidate``);
4. the jobs the scheduler hands out run in the executor on the
   ``history_bars`` bars up to ``t`` (``training.jobs.run_job``), are judged
   (``promotion.judge``, ``Registry.apply_verdict``) and superseded
   candidates retired; simulated time stands still while they train, and a
   version trained at ``t`` is live from the next bar on.

Nothing here sees a bar after ``t``: predictions of a span are made from the
bars up to each prediction's own bar (families' ``predict`` is causal).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.core.ensemble import MemberForecast, combine, plain_position
from quantum_daemon.core.evaluation.backtest import cost_rate
from quantum_daemon.core.scheduling import Scheduler, SchedulerPolicy
from quantum_daemon.core.scoring import shadow_outcome, shadow_verdict
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.ids import model_keys
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.inference.records import DuePrediction
from quantum_daemon.inference.rounds import SCALE_WINDOW, due_ts, settle, trust_rounds
from quantum_daemon.simulate.inputs import SimulationSeries
from quantum_daemon.simulate.predict_job import PredictResult, PredictSpec, predict_span
from quantum_daemon.simulate.records import (
    ACTIVE,
    CANDIDATE,
    BarRecord,
    Prediction,
    Progress,
    TimelineEntry,
    VersionRecord,
)
from quantum_daemon.simulate.training import TrainingDesk
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.storage.trust_store import StoredState, plan_round
from quantum_daemon.training.executor import Executor, JobOutcome

POSITION_FAMILIES = frozenset({"evo_model", "rl_sizer"})
SHADOW_REASON = "shadow"
PREDICT_CHUNK = 256  # bars forecast per batch call


class Simulation(TrainingDesk):
    """See the module docstring; ``run`` returns when the span is done or
    ``stop`` is set (then ``partial`` is true)."""

    def __init__(
        self,
        cfg: Config,
        series: Sequence[SimulationSeries],
        families: Sequence[str],
        data_dir: Path,
        executor: Executor,
        progress: Progress | None = None,
    ) -> None:
        self.cfg = cfg
        self.series = {s.key: s for s in series}
        self.tf = series[0].bars.tf
        self.step = timeframe_ms(self.tf)
        self.families = list(families)
        self.data_dir = data_dir
        self.executor = executor
        self.progress = progress or (lambda _: None)
        self.registry = Registry(data_dir)
        symbols = [s.bars.symbol for s in series]
        self.keys = model_keys(self.families, symbols, [self.tf])
        policy = SchedulerPolicy(
            retrain_every_bars=cfg.models.retrain_every_bars,
            retrain_interval_s=cfg.models.retrain_interval_s,
            min_bars=cfg.training.history_bars,
        )
        self.scheduler = Scheduler(self.keys, policy)
        self.cost_rate = cost_rate(cfg.evaluation.fee_bps, cfg.evaluation.slippage_bps)
        self.versions: dict[tuple[str, str], VersionRecord] = {}
        self.newest: dict[str, str] = {}
        self.weights: dict[str, float] = {}
        self.live_families: tuple[str, ...] = ()
        self.timeline: list[TimelineEntry] = []
        self.bars: dict[tuple[str, str], list[BarRecord]] = {k: [] for k in self.series}
        self.bar_row: dict[tuple[str, str], dict[int, int]] = {k: {} for k in self.series}
        self.trust_history: list[tuple[int, dict[str, float]]] = []
        self.jobs_done = 0
        self.jobs_failed = 0
        self.partial = False
        self.now_ms = 0
        self._loaded_cache: dict[str, list[tuple[str, str]]] = {}
        self.job_seconds: dict[str, float] = {}  # family -> training seconds in workers

    # -- the clock -----------------------------------------------------------
    def bar_times(self) -> list[int]:
        """Open times of the simulated bars across all series, in order."""
        times: set[int] = set()
        for s in self.series.values():
            times.update(int(t) for t in s.bars.ts[s.start : s.stop])
        return sorted(times)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        times = self.bar_times()
        first_close = times[0]  # the close of the last history bar is the open of the first
        self._start(first_close)
        await self._train_ready(first_close, {})
        for n, ts in enumerate(times):
            if stop.is_set():
                self.partial = True
                break
            await self.step_bar(ts)
            self.progress(
                {
                    "done": n + 1,
                    "total": len(times),
                    "ts": ts + self.step,
                    "versions": self.jobs_done,
                }
            )

    def _start(self, now_ms: int) -> None:
        for key, s in self.series.items():
            self.scheduler.set_available(key[0], key[1], s.start)
        self.scheduler.start(now_ms / 1000, {})
        self.now_ms = now_ms

    async def step_bar(self, ts: int) -> None:
        close_ms = ts + self.step
        self.now_ms = close_ms
        index = {}
        for key, s in self.series.items():
            i = _index_of(s.bars.ts, ts)
            if i is not None and s.start <= i < s.stop:
                index[key] = i
                self.scheduler.bars_stored(key[0], key[1], 1, close_ms / 1000)
        self.scheduler.tick(close_ms / 1000)
        await self._forecast(index)
        for key, i in index.items():
            self._signal(key, i)
        for key, i in index.items():
            await self._settle(key, i)
        await self._train_ready(close_ms, index)

    # -- forecasts and the signal -------------------------------------------------
    def live_versions(self, symbol: str) -> list[tuple[str, VersionRecord]]:
        """(stage, version) of every active and loaded candidate of the series'
        models, as the inference worker loads them."""
        out = []
        for key in self.keys:
            if key.symbol != symbol:
                continue
            for version, stage in self._loaded(key.model_id):
                out.append((stage, self.versions[(key.model_id, version)]))
        return out

    def _loaded(self, model_id: str) -> list[tuple[str, str]]:
        if model_id not in self._loaded_cache:
            self._loaded_cache[model_id] = self._read_loaded(model_id)
        return self._loaded_cache[model_id]

    def _read_loaded(self, model_id: str) -> list[tuple[str, str]]:
        if model_id not in self._known_models():
            return []
        show = self.registry.show(model_id)
        active = show["active"]
        candidates = [v["version"] for v in show["versions"] if v["stage"] == CANDIDATE]
        keep = candidates[-self.cfg.inference.max_candidates :] if candidates else []
        loaded = [(active, ACTIVE)] if active else []
        return loaded + [(v, CANDIDATE) for v in keep]

    def _known_models(self) -> set[str]:
        return {mid for mid, _ in self.versions}

    async def _forecast(self, index: dict[tuple[str, str], int]) -> None:
        """Make sure every live and newest version has its forecast for the bar."""
        wanted: list[tuple[VersionRecord, Bars, int]] = []
        for key, i in index.items():
            records = [v for _, v in self.live_versions(key[0])]
            records += [
                self.versions[(k.model_id, self.newest[k.model_id])]
                for k in self.keys
                if k.symbol == key[0] and k.model_id in self.newest
            ]
            for record in {id(r): r for r in records}.values():
                if i not in record.predictions and i >= record.live_from:
                    wanted.append((record, self.series[key].bars, i))
        results = await self._run_all(
            [self._predict_spec(r, bars, i) for r, bars, i in wanted], predict_span
        )
        for (record, _, i), outcome in zip(wanted, results, strict=True):
            self._store_predictions(record, i, outcome)

    def _predict_spec(self, record: VersionRecord, bars: Bars, i: int) -> PredictSpec:
        series = self.series[(bars.symbol, bars.tf)]
        stop = min(i + PREDICT_CHUNK, series.stop)
        begin = max(0, i - self.cfg.inference.context_bars)
        return PredictSpec(
            job_id=f"predict-{record.model_id}-{record.version}-{i}",
            family=record.family,
            path=record.path,
            bars=bars.slice(begin, stop),
            first=i - begin,
        )

    def _store_predictions(self, record: VersionRecord, i: int, outcome: JobOutcome) -> None:
        if not outcome.ok:
            self.timeline.append(
                TimelineEntry(self.now_ms, "prediction_failed", record.model_id, record.version,
                              outcome.reason or outcome.status)
            )  # fmt: skip
            record.predictions[i] = Prediction(math.nan, math.nan, None)
            return
        result: PredictResult = outcome.result
        record.horizon = result.horizon
        for k in range(len(result.mu)):
            position = None if result.position is None else float(result.position[k])
            record.predictions[i + k] = Prediction(
                float(result.mu[k]), float(result.p_up[k]), position
            )

    def _signal(self, key: tuple[str, str], i: int) -> None:
        bars = self.series[key].bars
        forecasts = {}
        for stage, record in self.live_versions(key[0]):
            p = record.predictions.get(i)
            if p is not None and math.isfinite(p.mu) and math.isfinite(p.p_up):
                forecasts[(record.model_id, record.version)] = (stage, p, record)
                record.live_bars += 1
        active = [
            MemberForecast(r.family, r.model_id, r.version, p.mu, p.p_up)
            for stage, p, r in forecasts.values()
            if stage == ACTIVE and r.family != "rl_sizer"
        ]
        signal = None
        if active:
            pooled = combine(active, self.weights)
            threshold = self.cfg.evaluation.position_threshold
            position = plain_position(pooled.mu, pooled.p_up, threshold)
            signal = {
                "ts": int(bars.ts[i]),
                "symbol": key[0],
                "tf": key[1],
                "mu": pooled.mu,
                "p_up": pooled.p_up,
                "position": position,
                "position_source": "plain_rule",
                "plain_position": position,
                "contributions": [
                    {"family": c.family, "model": c.model, "version": c.version,
                     "weight": c.weight, "mu": c.mu, "p_up": c.p_up}
                    for c in pooled.contributions
                ],
                "versions": {c.family: c.version for c in pooled.contributions},
            }  # fmt: skip
        newest = {
            k.model_id: self.newest[k.model_id]
            for k in self.keys
            if k.symbol == key[0] and k.model_id in self.newest
        }
        self.bar_row[key][int(bars.ts[i])] = len(self.bars[key])
        self.bars[key].append(
            BarRecord(
                ts=int(bars.ts[i]),
                close=float(bars.close[i]),
                forecasts={key: (st, p) for key, (st, p, _) in forecasts.items()},
                newest=newest,
                weights=dict(self.weights),
                signal=signal,
            )
        )

    # -- settling: trust rounds and the shadow record -----------------------------------
    async def _settle(self, key: tuple[str, str], i: int) -> None:
        """Settle what bar ``i`` decides: forecasts made ``horizon`` bars ago
        and positions made one bar ago (``rounds.due_ts``)."""
        bars = self.series[key].bars
        history = self.bars[key]
        due: list[DuePrediction] = []
        by_ts = self.bar_row[key]
        for record in self._records_of(key[0]):
            is_position = record.family in POSITION_FAMILIES
            lag = 1 if is_position else record.horizon
            made_at = int(bars.ts[i]) - lag * self.step
            n = by_ts.get(made_at)
            mine = (record.model_id, record.version)
            made = None if n is None else history[n].forecasts.get(mine)
            if n is None or made is None:
                continue
            stage, p = made
            due.append(self._due(record, stage, p, history, n, is_position))
        if not due:
            return
        start = max(0, (_index_of(bars.ts, min(d.ts for d in due)) or 0) - SCALE_WINDOW - 1)
        window = bars.slice(start, i + 1)
        settled = settle(due, window, self.cost_rate)
        for d, s in zip(due, settled, strict=True):
            if s.loss is not None:
                self.versions[(d.model_id, d.version)].losses[d.ts] = s.loss
        for round_ts, scores in trust_rounds(due, settled, self.step):
            state = StoredState(self.weights, frozenset(), None)
            plan = plan_round(state, scores, self.live_families, round_ts, self.cfg.trust)
            if plan.round.changed:
                self.weights = dict(plan.round.after)
                self.trust_history.append((round_ts, dict(self.weights)))
        self._judge_shadow(sorted({d.model_id for d in due if d.stage == CANDIDATE}))

    def _records_of(self, symbol: str) -> list[VersionRecord]:
        return [v for v in self.versions.values() if v.symbol == symbol]

    def _due(
        self,
        record: VersionRecord,
        stage: str,
        p: Prediction,
        history: list[BarRecord],
        n: int,
        is_position: bool,
    ) -> DuePrediction:
        def plain_at(k: int) -> float | None:
            signal = history[k].signal if k >= 0 else None
            return None if signal is None else float(signal["plain_position"])

        mine = (record.model_id, record.version)
        previous = history[n - 1].forecasts.get(mine) if n > 0 else None
        previous_position = None if previous is None else previous[1].position
        ts = history[n].ts
        return DuePrediction(
            model_id=record.model_id,
            version=record.version,
            family=record.family,
            stage=stage,
            symbol=record.symbol,
            tf=self.tf,
            ts=ts,
            due_ts=due_ts(ts, record.horizon, self.step, is_position),
            mu=p.mu,
            p_up=p.p_up,
            position=p.position if is_position else None,
            previous_position=previous_position,
            plain=plain_at(n),
            previous_plain=plain_at(n - 1),
        )

    def _judge_shadow(self, model_ids: list[str]) -> None:
        min_bars = self.cfg.promotion.shadow_min_bars
        changed = False  # re-reading the registry every bar was most of the loop's time
        for model_id in model_ids:
            loaded = self._loaded(model_id)
            active = next((v for v, st in loaded if st == ACTIVE), None)
            candidates = [v for v, st in loaded if st == CANDIDATE]
            if active is None or not candidates:
                continue
            active_losses = self.versions[(model_id, active)].losses
            verdicts = {
                v: shadow_verdict(self.versions[(model_id, v)].losses, active_losses, min_bars)
                for v in candidates
            }
            best, expired = shadow_outcome(verdicts, self.cfg.promotion.shadow_max_bars)
            changed = changed or bool(expired) or best is not None
            for version in expired:
                v = verdicts[version]
                detail = (
                    f"mean loss {v.candidate_loss:.6f} vs {v.active_loss:.6f} "
                    f"of {active} over {v.bars} common bars"
                )
                events = self.registry.retire_candidate(
                    model_id, version, active, SHADOW_REASON, detail
                )
                self._note(events, model_id)
            if best is not None:
                events = self.registry.promote_candidate(model_id, best, active, SHADOW_REASON)
                self._note(events, model_id)
        if changed:
            self._refresh_live()

    # -- the executor -------------------------------------------------------------------
    async def _run_all(self, specs: Sequence[Any], fn: Callable[[Any], Any]) -> list[JobOutcome]:
        """Run every spec in the executor, as many at once as it has workers;
        outcomes in the order of ``specs``."""
        outcomes: dict[int, JobOutcome] = {}
        running: dict[asyncio.Task[JobOutcome], int] = {}
        queue = list(enumerate(specs))
        while queue or running:
            while queue and self.executor.reserve(queue[0][1].family):
                n, spec = queue.pop(0)
                task = asyncio.ensure_future(
                    self.executor.run(
                        fn,
                        spec,
                        family=spec.family,
                        job_id=spec.job_id,
                        timeout_s=self.cfg.training.job_timeout_s,
                    )
                )
                running[task] = n
            if not running:
                raise RuntimeError("the executor has no worker for these jobs")
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                outcomes[running.pop(task)] = task.result()
        return [outcomes[n] for n in range(len(specs))]


def _index_of(ts: np.ndarray, value: int) -> int | None:
    i = int(np.searchsorted(ts, value))
    return i if i < len(ts) and int(ts[i]) == value else None
