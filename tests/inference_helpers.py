"""Drive a real ``InferenceService`` (real worker process, real Redis, real
SQLite) bar by bar, the way ingest's hook does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import (
    Config,
    EvaluationConfig,
    InferenceConfig,
    PromotionConfig,
    RedisConfig,
    StorageConfig,
)
from quantum_daemon.inference import InferenceService
from quantum_daemon.storage.bar_store import Bar, BarStore
from tests.judge_rules import OLD_RULES
from tests.planted_family import PLANTED

FAMILIES = ("xgb", "lgbm", "nhits", "patchtst", "evo_model", "rl_sizer")


def make_config(
    redis_url: str,
    data_dir: Path,
    horizon: int = 2,
    shadow_min_bars: int = 48,
    shadow_max_bars: int = 240,
    max_candidates: int = 2,
) -> Config:
    return Config(
        redis=RedisConfig(url=redis_url),
        storage=StorageConfig(data_dir=data_dir),
        evaluation=EvaluationConfig(horizon=horizon),
        promotion=PromotionConfig(
            shadow_min_bars=shadow_min_bars,
            shadow_max_bars=shadow_max_bars,
            **OLD_RULES,
        ),
        inference=InferenceConfig(max_candidates=max_candidates),
    )


def bar_at(bars: Bars, t: int) -> Bar:
    return Bar(
        bars.symbol,
        bars.tf,
        int(bars.ts[t]),
        float(bars.open[t]),
        float(bars.high[t]),
        float(bars.low[t]),
        float(bars.close[t]),
        float(bars.volume[t]),
    )


@dataclass
class Feeder:
    """Stores bars and tells the service, like ingest does."""

    service: InferenceService
    store: BarStore
    bars: Bars
    fed: int = 0
    after_each: list[Any] = field(default_factory=list)

    def store_until(self, stop: int) -> None:
        """Store bars [fed, stop) and tell the service, without serving."""
        self.store.insert_bars([bar_at(self.bars, t) for t in range(self.fed, stop)])
        self.service.bars_stored(self.bars.symbol, self.bars.tf, stop - self.fed)
        self.fed = stop

    async def feed(self, stop: int, one_by_one: bool = True) -> None:
        """Store and serve bars up to ``stop`` (exclusive), one at a time."""
        while self.fed < stop:
            self.store_until(self.fed + 1 if one_by_one else stop)
            await self.service.run_until_idle()
            for check in self.after_each:
                await check(self)


@contextlib.asynccontextmanager
async def inference(
    cfg: Config, families: Iterable[str] = FAMILIES, **kwargs: Any
) -> AsyncIterator[tuple[InferenceService, BarStore]]:
    """A started service on a fresh bar store in ``cfg``'s data dir; the
    families given load the planted test class."""
    client = aioredis.Redis.from_url(cfg.redis.url)
    store = BarStore.in_dir(cfg.storage.data_dir)
    service = InferenceService(
        cfg,
        client,
        store,
        CollectorRegistry(),
        family_classes=[(f, PLANTED) for f in families],
        **kwargs,
    )
    try:
        async with service:
            yield service, store
    finally:
        store.close()
        await client.aclose()
