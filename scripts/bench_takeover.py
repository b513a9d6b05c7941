#!/usr/bin/env python
"""Taking over a series (docs/scaling.md, "Ownership") against plain ingest.

One stream of BARS bars, published once. Each run, on a fresh consumer
group and a fresh store:

  (a) ingest: ``IngestService.run_until_idle`` reads the whole stream with
      the group into an empty store (the baseline: a first start);
  (b) take-over into an empty store from an owner that had read and
      acknowledged the whole stream: ``take_over`` (the history by
      ``XRANGE`` up to the group's last delivered entry, then claiming);
  (c) take-over again into the now full store (a restart, or a series
      coming back): ``history_start`` scans back one chunk and loads it.

Prints bars/s of (a) and (b), the ratio (b)/(a), and the seconds of (c)
against (a); medians over ``--repeats``. Run on a quiet machine for
numbers; on a shared one say so.

    .venv/bin/python scripts/bench_takeover.py [--bars 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis
import uvloop
from prometheus_client import CollectorRegistry

from quantum_daemon.domain.config import Config, IngestConfig, RedisConfig, StorageConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest import IngestMetrics, IngestService
from quantum_daemon.ingest.replay import publish_frame
from quantum_daemon.runtime.logs import configure_logging
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon_dev.redis_server import running_redis

SYMBOL, TF = "BENCHUSDT", "1m"
KEYS = Keys()


def bars_frame(n: int):  # type: ignore[no-untyped-def]
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    close = np.round(100 * np.exp(np.cumsum(0.001 * rng.standard_normal(n))), 4)
    open_ = np.concatenate([[close[0]], close[:-1]])
    return pd.DataFrame(
        {
            "ts": 1_577_836_800_000 + np.arange(n, dtype=np.int64) * 60_000,
            "open": open_,
            "high": np.maximum(open_, close) + 0.01,
            "low": np.minimum(open_, close) - 0.01,
            "close": close,
            "volume": np.round(rng.lognormal(2, 1, n), 5),
        }
    )


async def drain_as_old_owner(client: aioredis.Redis, group: str) -> None:
    stream = KEYS.bars(SYMBOL, TF)
    await client.xgroup_create(stream, group, id="0")
    while reply := await client.xreadgroup(group, "gone-1", {stream: ">"}, count=10_000):
        ids = [entry_id for entry_id, _ in reply[0][1]]
        await client.xack(stream, group, *ids)


async def one_run(url: str, run: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    timings: dict[str, float] = {}
    for mode in ("ingest", "takeover"):
        group = f"bench-{mode}-{run}"
        cfg = Config(
            redis=RedisConfig(url=url),
            ingest=IngestConfig(symbols=(SYMBOL,), timeframes=(TF,), group=group),
            storage=StorageConfig(data_dir=Path(tempfile.mkdtemp(prefix="qd-bench-"))),
        )
        owned = mode == "takeover"
        if owned:  # the old owner: delivered and acknowledged everything
            await drain_as_old_owner(client, group)
        with BarStore.in_dir(cfg.storage.data_dir) as store:
            metrics = IngestMetrics(CollectorRegistry())
            async with IngestService(cfg, client, store, metrics, owned_only=owned) as ingest:
                await ingest.prepare()
                started = time.perf_counter()
                if owned:
                    await ingest.take_over([(SYMBOL, TF)])
                await ingest.run_until_idle()
                timings[mode] = time.perf_counter() - started
                if owned:
                    ingest.give_up([(SYMBOL, TF)])
                    started = time.perf_counter()
                    await ingest.take_over([(SYMBOL, TF)])
                    await ingest.run_until_idle()
                    timings["again"] = time.perf_counter() - started
            timings[f"{mode}_bars"] = store.count()
    await client.aclose()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning")
    with running_redis() as server:
        publish_frame(
            redis.Redis.from_url(server.url), KEYS.bars(SYMBOL, TF), bars_frame(args.bars)
        )
        runs = [uvloop.run(one_run(server.url, run)) for run in range(args.repeats)]
    for r in runs:
        assert r["ingest_bars"] == r["takeover_bars"] == args.bars, r
    ingest = statistics.median(r["ingest"] for r in runs)
    takeover = statistics.median(r["takeover"] for r in runs)
    again = statistics.median(r["again"] for r in runs)
    print(f"bars: {args.bars:,} in one stream, median of {args.repeats} runs")
    print(f"(a) ingest into an empty store: {args.bars / ingest:,.0f} bars/s ({ingest:.2f} s)")
    print(
        f"(b) take-over into an empty store: {args.bars / takeover:,.0f} bars/s ({takeover:.2f} s)"
    )
    print(f"ratio (b)/(a) in bars/s: {ingest / takeover:.2f}")
    print(f"(c) take-over into the full store: {again:.3f} s = {again / ingest:.3f} of (a)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
