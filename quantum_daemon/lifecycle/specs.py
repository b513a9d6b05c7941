"""What a training job is given: the frozen ``TrainJobSpec`` of a request.

The spec carries the series' last ``history_bars`` bars as arrays, a
reference to the model's active version (for the head-to-head), the recorded
ensemble signals for the families that learn from them, the reference
symbols' bars over the same span where ``[features] context`` applies, and
the name its new version will take. A multi-symbol model's spec carries the
bars of each of its symbols (``series``). Store and registry reads run in threads.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis.asyncio as aioredis

from quantum_daemon.core.context_features import FeatureContext, feature_context
from quantum_daemon.core.scheduling import TrainRequest
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.signals import RecordedSignals
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.prediction_records import RECORDS_FILE, PredictionRecords
from quantum_daemon.storage.recorded_signals import read_recorded_signals
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.jobs import ActiveRef, TrainJobSpec

log = get_logger()


class BarSource(Protocol):
    """What the lifecycle reads from the bar store (``store.BarStore``)."""

    def read_bars(
        self,
        symbol: str,
        tf: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        last_n: int | None = None,
    ) -> Bars: ...

    def count(self, symbol: str | None = None, tf: str | None = None) -> int: ...


class JobSpecs:
    """Builds the spec of each job the scheduler hands out."""

    def __init__(
        self,
        cfg: Config,
        store: BarSource,
        registry: Registry,
        client: aioredis.Redis,
        keys: Keys,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.registry = registry
        self.client = client
        self.keys = keys
        self.clock = clock

    async def build(self, request: TrainRequest) -> TrainJobSpec:
        key = request.key
        series = await self.multi_series(key)
        bars = series[0] if series else await asyncio.to_thread(
            self.store.read_bars, key.symbol, key.tf, last_n=self.cfg.training.history_bars
        )
        active = await asyncio.to_thread(self.registry.active_version, key.model_id)
        path = self.registry.version_path(key.model_id, active) if active else None
        signals = None
        if key.family in SIZER_FAMILIES:
            signals = await self.recorded_signals(key, int(bars.ts[-1]) if len(bars) else None)
        return TrainJobSpec(
            job_id=f"{key.model_id}-{uuid.uuid4().hex[:8]}",
            family=key.family,
            bars=bars,
            data_dir=str(self.cfg.storage.data_dir),
            version_time=await asyncio.to_thread(self.version_time, key.model_id),
            evaluation=self.cfg.evaluation,
            params=self.cfg.models.params.for_model(key.family, key.model_id),
            # a multi model does not tune (training.offline_multi)
            tuning=None if series else self.cfg.tuning.plan_for(key.family, key.model_id),
            seed=self.cfg.models.seed,
            timeout_s=self.cfg.training.job_timeout_s,
            active=ActiveRef(active, str(path)) if active and path else None,
            signals=signals,
            series=series,
            # a global model takes no context features (docs/families.md)
            context=None
            if series
            else await asyncio.to_thread(self.feature_context, key.family, bars),
        )

    async def multi_series(self, key: ModelKey) -> tuple[Bars, ...]:
        """The last ``history_bars`` bars of each symbol of a multi-symbol
        model (``[models.multi]``); () for a single-symbol model."""
        symbols = self.cfg.models.multi.symbols_of(key.model_id)
        last_n = self.cfg.training.history_bars
        return tuple(
            [
                await asyncio.to_thread(self.store.read_bars, symbol, key.tf, last_n=last_n)
                for symbol in symbols
            ]
        )

    def feature_context(self, family: str, bars: Bars) -> FeatureContext | None:
        """The context features' spec and reference bars (None: off for the model)."""
        if len(bars) == 0:
            return None

        def read(symbol: str, target: Bars) -> Bars:
            end = int(target.ts[-1]) + 1
            return self.store.read_bars(symbol, target.tf, start_ms=int(target.ts[0]), end_ms=end)

        return feature_context(self.cfg.features, family, bars, read)

    async def recorded_signals(self, key: ModelKey, last_ts: int | None) -> RecordedSignals:
        """The series' recorded ensemble signals up to the job's last bar
        (``last_ts``): bars stored and answered after the job read its bars
        are not its to see."""
        signals = await read_recorded_signals(self.client, self.keys, key.symbol, key.tf)
        if signals.skipped:
            log.warning("signals.unreadable", model_id=key.model_id, skipped=signals.skipped)
        recorded = await asyncio.to_thread(self._signal_history, key.symbol, key.tf)
        if recorded:  # the stream's own entries win where both have a bar
            signals = signals.merged_after(recorded)
        return signals.until(last_ts)

    def _signal_history(self, symbol: str, tf: str) -> list[tuple[int, float, float]]:
        """The signals recorded in ``predictions.sqlite3`` (live and seeded by
        ``simulate --seed-live``): the stream keeps only its newest entries."""
        path = self.cfg.storage.data_dir / RECORDS_FILE
        if not path.is_file():
            return []
        records = PredictionRecords(path)
        try:
            return records.signal_history(symbol, tf)
        finally:
            records.close()

    def version_time(self, model_id: str) -> datetime:
        """Now, or one second past the model's newest version name."""
        now = datetime.fromtimestamp(self.clock(), UTC).replace(microsecond=0)
        names = artifacts.list_versions(self.cfg.storage.data_dir, model_id)
        if not names:
            return now
        newest = datetime.strptime(names[-1], artifacts.VERSION_FORMAT).replace(tzinfo=UTC)
        return max(now, newest + timedelta(seconds=1))
