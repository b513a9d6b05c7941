"""Decay of what is live, watched as the bars settle: a live version's loss
drifting up (``core.drift``: an event and a retraining) and the ensemble's
Brier score against the naive forecast (``core.kill_switch``: the series'
published position held flat while it loses). The simulated loop has its
twin in ``simulate.decay``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from redis.exceptions import RedisError

from quantum_daemon.core.drift import Drift, DriftWatch
from quantum_daemon.core.kill_switch import NAIVE_BRIER, KillChange, KillSwitch, ensemble_loss
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.events import (
    ENSEMBLE_KILLED,
    ENSEMBLE_RELEASED,
    MODEL_DRIFT_DETECTED,
    Event,
    make_event,
)
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.inference.context import InferenceState, IoThread, Transitions
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.prediction_records import DuePrediction, PredictionRecords

log = get_logger()


class DecayWatch:
    """Drift per live version and the kill switch per series; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        state: InferenceState,
        store: BarStore,
        records: PredictionRecords,
        io: IoThread,
        transitions: Transitions,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.store = store
        self.records = records
        self.io = io
        self.transitions = transitions
        promotion = cfg.promotion
        self.drift = DriftWatch.from_config(promotion)
        self.kill = KillSwitch(promotion.kill_window, promotion.kill_margin)
        self.kill.killed = state.killed  # serving reads it from the shared state
        self._ensemble_scored: dict[tuple[str, str], int] = {}  # series -> last decision scored

    def keep_only(self, loaded: set[tuple[str, str]]) -> None:
        """Forget the drift state of versions no longer loaded."""
        if self.drift is not None:
            self.drift.keep_only(loaded)

    async def observe_loss(self, p: DuePrediction, loss: float, step: int) -> None:
        """A settled live loss of one version: into its drift detector."""
        if self.drift is None:
            return
        found = self.drift.observe(p.model_id, p.version, p.ts, loss, step)
        if found is not None:
            await self._drifted(found)

    async def score_ensemble(self, symbol: str, tf: str, upto_ts: int) -> None:
        """The Brier score of each published ensemble forecast whose horizon
        has elapsed by bar ``upto_ts``, into the series' kill switch (after a
        restart its window is rebuilt from the records)."""
        window = self.cfg.promotion.kill_window
        if window == 0:
            return
        step, horizon = timeframe_ms(tf), self.cfg.evaluation.horizon
        settled_upto = upto_ts - horizon * step
        after = self._ensemble_scored.get((symbol, tf), settled_upto - (window + 1) * step)
        if settled_upto <= after:
            return
        forecasts = await self.io.run(
            self.records.ensemble_forecasts, symbol, tf, after, settled_upto
        )
        self._ensemble_scored[(symbol, tf)] = settled_upto
        if not forecasts:
            return
        bars = await self.io.run(self.store.read_bars, symbol, tf, forecasts[0][0], upto_ts + 1)
        close = dict(zip((int(t) for t in bars.ts), (float(c) for c in bars.close), strict=True))
        for ts, p_up in forecasts:
            start, end = close.get(ts), close.get(ts + horizon * step)
            if start is None or end is None:
                continue  # a gap: never scored
            change = self.kill.observe((symbol, tf), ensemble_loss(p_up, start, end))
            if change is not None:
                await self._kill_switched(symbol, tf, ts, change)

    async def _kill_switched(self, symbol: str, tf: str, ts: int, change: KillChange) -> None:
        kind = ENSEMBLE_KILLED if change.killed else ENSEMBLE_RELEASED
        data = {
            "event_id": f"{kind}|{symbol}|{tf}|{ts}",
            "symbol": symbol,
            "tf": tf,
            "bar_ts": ts,
            "timestamp": datetime.now(UTC).isoformat(),
            "rolling_brier": round(change.rolling_brier, 6),
            "bars": change.bars,
            "naive_brier": NAIVE_BRIER,
            "reason": change.reason,
        }
        (log.warning if change.killed else log.info)(
            kind, symbol=symbol, tf=tf, bar_ts=ts, reason=change.reason
        )
        try:
            await self.transitions.publisher.publish(Event(kind, data))
        except (RedisError, OSError) as exc:
            log.warning("events.publish_failed", type=kind, error=str(exc))

    async def _drifted(self, drift: Drift) -> None:
        """A live version's loss drifted up: an event, and a retraining
        (through the lifecycle, when there is one)."""
        key = ModelKey.parse(drift.model_id)
        event = make_event(
            MODEL_DRIFT_DETECTED,
            model_id=drift.model_id,
            family=key.family,
            symbol=key.symbol,
            tf=key.tf,
            version=drift.version,
            at=datetime.now(UTC),
            transition=f"drift@{drift.ts}",
            bar_ts=drift.ts,
            mean_loss_before=round(drift.mean_before, 6),
            mean_loss_after=round(drift.mean_after, 6),
        )
        self.state.totals.drifts += 1
        log.warning(
            MODEL_DRIFT_DETECTED,
            model_id=drift.model_id,
            version=drift.version,
            bar_ts=drift.ts,
            mean_loss_before=round(drift.mean_before, 6),
            mean_loss_after=round(drift.mean_after, 6),
        )
        await self.io.run(self.transitions.registry.add_events, drift.model_id, [event])
        await self.transitions.publish(drift.model_id, [event])
        if self.transitions.lifecycle is not None:
            self.transitions.lifecycle.request_retrain(drift.model_id, "drift")
