"""Runs a real ``LifecycleService`` (real Redis, real bar store, real spawn
workers) until a condition holds, for the lifecycle and control tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from quantum_daemon.domain.config import (
    Config,
    LoggingConfig,
    ModelsConfig,
    PromotionConfig,
    RedisConfig,
    StorageConfig,
    TrainingConfig,
)
from quantum_daemon.domain.events import Event
from quantum_daemon.domain.keys import Keys
from quantum_daemon.lifecycle.service import LifecycleService
from quantum_daemon.storage.bar_store import Bar, BarStore
from quantum_daemon.storage.events import parse_entry
from quantum_daemon.training.executor import JobFn
from tests import jobs_for_tests
from tests.conftest import make_bars
from tests.judge_rules import OLD_RULES

KEYS = Keys("quantum")
GOOD = {"trades": 20, "dsr": 0.7, "profit_factor": 1.3, "sharpe": 1.0}
BETTER = {**GOOD, "sharpe": 2.0}
BAD = {**GOOD, "trades": 1}


def make_config(data_dir: Path, redis_url: str, families: tuple[str, ...] = ("xgb",)) -> Config:
    return Config(
        redis=RedisConfig(url=redis_url, reconnect_max_s=0.5),
        storage=StorageConfig(data_dir=data_dir),
        logging=LoggingConfig(level="warning"),
        training=TrainingConfig(workers=1, history_bars=300, job_timeout_s=60.0, gpu="off"),
        models=ModelsConfig(
            families=families, symbols=("BTCUSDT",), timeframes=("1h",), retrain_every_bars=100
        ),
        promotion=PromotionConfig(min_trades=5, min_profit_factor=1.0, **OLD_RULES),
    )


def with_timeout(cfg: Config, seconds: float) -> Config:
    return replace(cfg, training=replace(cfg.training, job_timeout_s=seconds))


def without_bar_triggers(cfg: Config) -> Config:
    return replace(cfg, models=replace(cfg.models, retrain_every_bars=10**6))


def plan(data_dir: Path, **metrics: Any) -> None:
    """What ``fake_train`` will report per family."""
    (data_dir / jobs_for_tests.FAKE_METRICS_FILE).write_text(json.dumps(metrics))


def add_bars(store: BarStore, n: int, start: int = 0) -> None:
    bars = make_bars(start + n, symbol="BTCUSDT").slice(start, None)
    rows = [
        Bar(
            "BTCUSDT",
            "1h",
            int(bars.ts[i]),
            float(bars.open[i]),
            float(bars.high[i]),
            float(bars.low[i]),
            float(bars.close[i]),
            float(bars.volume[i]),
        )
        for i in range(len(bars))
    ]
    store.insert_bars(rows)


def events(client: redis.Redis) -> list[Event]:
    return [parse_entry(fields) for _, fields in client.xrange(KEYS.events)]


def of_model(all_events: list[Event], model_id: str) -> list[str]:
    return [e.type for e in all_events if e.model_id == model_id]


Check = Callable[[LifecycleService], Awaitable[bool] | bool]


async def run_service(
    cfg: Config,
    store: BarStore,
    until: Check,
    timeout_s: float = 60.0,
    job_fn: JobFn = jobs_for_tests.fake_train,
    during: Callable[[LifecycleService], Awaitable[None]] | None = None,
    consumer: str | None = None,
) -> LifecycleService:
    """Start the service and its loops, run ``during``, stop when ``until``
    holds (or fail after ``timeout_s``)."""
    client = aioredis.Redis.from_url(cfg.redis.url)
    try:
        service = LifecycleService(
            cfg, client, store, CollectorRegistry(), job_fn=job_fn, consumer=consumer
        )
        async with service as svc:
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for name, factory in svc.loops().items():
                    tg.create_task(factory(stop), name=name)
                try:
                    if during is not None:
                        await during(svc)
                    await wait_until(svc, until, timeout_s)
                finally:
                    stop.set()
            return svc
    finally:
        await client.aclose()


async def wait_until(svc: LifecycleService, until: Check, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        done = until(svc)
        if not isinstance(done, bool):
            done = await done
        if done:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s}s; jobs: {svc.jobs_view()}")


def published(client: redis.Redis, *wanted: tuple[str, str]) -> Check:
    """True once every (type, model_id) pair is on the events stream."""

    async def check(_: LifecycleService) -> bool:
        got = await asyncio.to_thread(events, client)
        have = {(e.type, e.model_id) for e in got}
        return all(w in have for w in wanted)

    return check
