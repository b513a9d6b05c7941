"""Start-up is recovery: where each series stopped and the trust weights.

Each series resumes after its newest signal (in the records, or only in the
signal stream after a crash between publishing and recording); the trust
weights are read and their timeline rebuilt from the trust history. Needs
Redis, which may be away when the daemon starts: retried with backoff.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference.context import InferenceState, configured_series, stream_signal
from quantum_daemon.inference.timeline import WeightTimeline, rounds_in_history
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.trust_store import TrustStore

log = get_logger()


class Recovery:
    """Brings ``state`` to where the last run left it, once."""

    def __init__(
        self, cfg: Config, client: aioredis.Redis, trust: TrustStore, state: InferenceState
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.keys = Keys(cfg.redis.prefix)
        self.trust = trust
        self.state = state
        self.done = False

    async def run(self, stop: asyncio.Event | None = None) -> bool:
        """Recover, retrying while Redis is away; False if ``stop`` came first."""
        backoff = Backoff(cap=self.cfg.redis.reconnect_max_s)
        while not self.done:
            try:
                await self._resume_from_redis()
                self._seed_timeline(await self.trust.weights(), await self.trust.history())
                self.done = True
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "inference.recovery_waiting", error=str(exc), retry_in_s=round(delay, 3)
                )
                if stop is None:
                    await asyncio.sleep(delay)
                elif await sleep_or_stop(stop, delay):
                    return False
        return True

    async def _resume_from_redis(self) -> None:
        last_ts = self.state.last_ts
        for series in configured_series(self.cfg):
            entries = await self.client.xrevrange(self.keys.signals(*series), count=1)
            if entries:
                ts = stream_signal(entries[0][1]).ts
                last_ts[series] = max(ts, last_ts.get(series, ts))

    def _seed_timeline(
        self, weights: dict[str, float], history: dict[str, list[tuple[int, float]]]
    ) -> None:
        """The rounds the history holds whole, then the current weights: at
        the newest answered bar's close when the history lacks them (no round
        can be later than that bar)."""
        timeline = WeightTimeline()
        for round_ts, after in rounds_in_history(history, weights):
            timeline.append(round_ts, after)
        if dict(timeline.newest) != weights:
            timeline.append(self.state.round_ts() or 0, weights)
        self.state.timeline = timeline
        self.state.weights = weights
