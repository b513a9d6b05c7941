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
   (``promotion.shadow_verdict``, ``shadow_outcome``, the registry's
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quantum_daemon.core.context_features import reference_window
from quantum_daemon.core.drift import DriftWatch
from quantum_daemon.core.ensemble import (
    EnsembleForecast,
    MemberForecast,
    Signal,
    SizerDecision,
    build_signal,
    combine,
    flat_signal,
    held_flat,
    signal_json,
)
from quantum_daemon.core.evaluation.backtest import cost_rate
from quantum_daemon.core.kill_switch import KillSwitch
from quantum_daemon.core.scheduling import Scheduler, SchedulerPolicy
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.ids import model_id as id_of_model
from quantum_daemon.domain.ids import model_keys
from quantum_daemon.domain.multi_models import with_multi
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.models.sizer_book import SizerBook
from quantum_daemon.simulate.decay import DecayDesk
from quantum_daemon.simulate.dispatch import run_all
from quantum_daemon.simulate.inputs import SimulationSeries
from quantum_daemon.simulate.multi import MultiDesk, multi_models, one_per_family
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
from quantum_daemon.simulate.settling import SettlingDesk, _index_of
from quantum_daemon.simulate.sizing import BookKey, SizingDesk
from quantum_daemon.simulate.training import TrainingDesk
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.executor import Executor, JobOutcome

PREDICT_CHUNK = 256  # bars forecast per batch call


class Simulation(TrainingDesk, SettlingDesk, SizingDesk, DecayDesk, MultiDesk):
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
        params: Mapping[str, Mapping[str, Any]] | None = None,
        reference: Sequence[Bars] = (),
    ) -> None:
        self.cfg = cfg
        self.params = dict(params or {})  # family -> the training jobs' hyper-parameters
        self.series = {s.key: s for s in series}
        # context features' reference symbols: the simulated series and any reference-only ones
        self.reference_bars = {b.symbol: b for b in reference} | {
            s.bars.symbol: s.bars for s in series
        }
        self.tf = series[0].bars.tf
        self.step = timeframe_ms(self.tf)
        self.families = list(families)
        self.data_dir = data_dir
        self.executor = executor
        self.progress = progress or (lambda _: None)
        self.registry = Registry(data_dir)
        symbols = [s.bars.symbol for s in series]
        self.multi = multi_models(cfg, symbols, self.tf)  # global models ([models.multi])
        self.keys = with_multi(model_keys(self.families, symbols, [self.tf]), self.multi)
        self.views: dict[tuple[str, str, str], VersionRecord] = {}
        self._multi_nets: dict[tuple[str, str, int], dict[str, float]] = {}
        policy = SchedulerPolicy(
            retrain_every_bars=cfg.models.retrain_every_bars,
            retrain_interval_s=cfg.models.retrain_interval_s,
            min_bars=cfg.training.history_bars,
        )
        self.scheduler = Scheduler(self.keys, policy, self.multi)
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
        self.books: dict[BookKey, SizerBook] = {}  # each live sizer's book per series
        self._rank: dict[tuple[str, str], int] = {}  # version -> order of training
        self._lags: dict[str, set[int]] = {}  # symbol -> settling lags of its versions
        self.job_seconds: dict[str, float] = {}  # family -> training seconds in workers
        self.model_records: dict[str, dict[int, tuple[str, float]]] = {}
        self._record_ts: dict[str, list[int]] = {}
        self._trials: dict[str, int] = {}
        promotion = cfg.promotion
        self.drift = DriftWatch.from_config(promotion)
        self.kill = KillSwitch(promotion.kill_window, promotion.kill_margin)

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
        pooled = {key: self._pool(key, i) for key, i in index.items()}
        await self._size(index, pooled)
        for key, i in index.items():
            self._signal(key, i, pooled[key])
        for key, i in index.items():
            await self._settle(key, i)
            self._score_ensemble(key, i)
            self._retire_stale(key, i)
        await self._train_ready(close_ms, index)

    # -- forecasts and the signal -------------------------------------------------
    def live_versions(self, symbol: str) -> list[tuple[str, VersionRecord]]:
        """(stage, version) of every active and loaded candidate of the series'
        models, as the inference worker loads them."""
        out = []
        for key in self.keys_of(symbol):
            for version, stage in self._loaded(key.model_id):
                out.append((stage, self.record_of(key.model_id, version, symbol)))
        answering = {
            stage: one_per_family([r.model_id for st, r in out if st == stage], symbol)
            for stage in {st for st, _ in out}
        }
        return [(stage, r) for stage, r in out if r.model_id in answering[stage]]

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
                self.record_of(k.model_id, self.newest[k.model_id], key[0])
                for k in self.keys_of(key[0])
                if k.model_id in self.newest
            ]
            for record in {id(r): r for r in records}.values():
                if record.family in SIZER_FAMILIES:
                    continue  # sized bar by bar on the ensemble (``sizing``)
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
        window = bars.slice(begin, stop)
        return PredictSpec(
            job_id=f"predict-{record.model_id}-{record.version}-{i}",
            family=record.family,
            path=record.path,
            bars=window,
            first=i - begin,
            reference=self._prediction_reference(record.family, window),
        )

    def _prediction_reference(self, family: str, window: Bars) -> dict[str, Bars]:
        """The reference bars a context version reads over ``window`` (``[features]``)."""
        if not self.cfg.features.applies_to(family, id_of_model(family, window.symbol, window.tf)):
            return {}
        return {
            s: reference_window(self.reference_bars[s], window)
            for s in self.cfg.features.reference_symbols
            if s in self.reference_bars and s != window.symbol
        }

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
        self._track(record)
        for k in range(len(result.mu)):
            position = None if result.position is None else float(result.position[k])
            record.predictions[i + k] = Prediction(
                float(result.mu[k]), float(result.p_up[k]), position, _quantiles(result, k)
            )

    def _pool(self, key: tuple[str, str], i: int) -> EnsembleForecast | None:
        """The active forecasters' pool under the trust weights (None: no
        active forecaster has a forecast for the bar)."""
        members = [
            MemberForecast(r.family, r.model_id, r.version, p.mu, p.p_up, p.quantiles)
            for stage, r in self.live_versions(key[0])
            if stage == ACTIVE and r.family not in SIZER_FAMILIES
            and (p := r.predictions.get(i)) is not None and _finite(p)
        ]  # fmt: skip
        return combine(members, self.weights) if members else None

    def _signal(self, key: tuple[str, str], i: int, pooled: EnsembleForecast | None) -> None:
        """The bar's record: every live version's prediction and the signal
        the daemon would have published (``core.ensemble.build_signal``)."""
        bars = self.series[key].bars
        forecasts = {}
        sizer = None
        for stage, record in self.live_versions(key[0]):
            p = record.predictions.get(i)
            if p is not None and _finite(p):
                forecasts[(record.model_id, record.version)] = (stage, p)
                record.live_bars += 1
                if stage == ACTIVE and record.family in SIZER_FAMILIES and p.position is not None:
                    sizer = sizer or SizerDecision(p.position, record.model_id, record.version)
        threshold = self.cfg.evaluation.position_threshold
        if pooled is not None:
            built = build_signal(key[0], key[1], int(bars.ts[i]), pooled, sizer, 0.0, threshold)
            if key in self.kill.killed:
                built = held_flat(built, self.kill.killed[key])
        else:
            built = self._flat(key, i, threshold)
        signal = {k: v for k, v in signal_json(built).items() if k != "latency_ms"}
        newest = self.newest_of(key[0])
        self.bar_row[key][int(bars.ts[i])] = len(self.bars[key])
        self.bars[key].append(
            BarRecord(
                ts=int(bars.ts[i]),
                close=float(bars.close[i]),
                forecasts=forecasts,
                newest=newest,
                weights=dict(self.weights),
                signal=signal,
                symbol=key[0],
            )
        )

    def _flat(self, key: tuple[str, str], i: int, threshold: float) -> Signal:
        """No active forecaster: the flat signal with the shadow pool (the
        newest candidate of each family), as ``inference.signals`` builds it."""
        newest: dict[str, MemberForecast] = {}
        for stage, r in self.live_versions(key[0]):
            p = r.predictions.get(i)
            if stage != CANDIDATE or r.family in SIZER_FAMILIES or p is None or not _finite(p):
                continue
            if r.family not in newest or r.version > newest[r.family].version:
                newest[r.family] = MemberForecast(r.family, r.model_id, r.version, p.mu, p.p_up)
        members = list(newest.values())
        shadow = combine(members, self.weights) if members else None
        families = ", ".join(sorted(newest))
        reason = (
            f"no active model: the record rule has not passed; in shadow: {families}"
            if members
            else "no active model and no candidate"
        )
        ts = int(self.series[key].bars.ts[i])
        return flat_signal(key[0], key[1], ts, reason, shadow, 0.0, threshold)

    async def _run_all(self, specs: Sequence[Any], fn: Callable[[Any], Any]) -> list[JobOutcome]:
        return await run_all(self.executor, specs, fn, self.cfg.training.job_timeout_s)


def _finite(p: Prediction) -> bool:
    return math.isfinite(p.mu) and math.isfinite(p.p_up)


def _quantiles(result: PredictResult, k: int) -> tuple[float, float, float] | None:
    """Row ``k``'s (q05, q50, q95), where the version gave finite ones."""
    if result.quantiles is None:
        return None
    q05, q50, q95 = (float(v) for v in result.quantiles[k])
    return (q05, q50, q95) if all(map(math.isfinite, (q05, q50, q95))) else None
