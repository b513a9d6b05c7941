#!/usr/bin/env python
"""Ingest throughput: the daemon's full path against a bare redis-py consumer.

Publishes BARS bars over STREAMS streams with ``quantum-daemon replay``'s
publisher (files written first, then ``replay_files``), then measures on the
same streams, each with a fresh consumer group:

  (a) bare: redis.asyncio + hiredis on uvloop, ``XREADGROUP COUNT 1000`` and
      ``XACK`` of the previous batch in the same pipeline (the ceiling: no
      decoding, no storing);
  (b) full: ``IngestService.run`` (decode, validate, store in SQLite, ack)
      into a fresh store, until every entry is acknowledged.

Prints bars/s of each, their ratio, the replay rate and the resident memory
of the process during (b). Medians over ``--repeats``. Run on a quiet machine
for numbers; on a shared one say so.

    .venv/bin/python scripts/bench_ingest.py [--bars 500000] [--streams 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import redis
import redis.asyncio as aioredis
import uvloop

from quantum_daemon.domain.config import Config, IngestConfig, RedisConfig, StorageConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest import IngestMetrics, IngestService
from quantum_daemon.ingest.replay import replay_files
from quantum_daemon.runtime.logs import configure_logging
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon_dev.redis_server import running_redis

KEYS = Keys()
T0 = 1_577_836_800_000  # 2020-01-01
MINUTE = 60_000


def synthetic_frame(n: int, seed: int) -> pd.DataFrame:
    """A 1m random walk with exchange-like precision (2 decimals, volume 5)."""
    rng = np.random.default_rng(seed)
    close = np.round(30_000 * np.exp(np.cumsum(0.001 * rng.standard_normal(n))), 2)
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = np.abs(rng.standard_normal((2, n))) * 5
    return pd.DataFrame(
        {
            "date": pd.to_datetime(T0 + np.arange(n) * MINUTE, unit="ms", utc=True),
            "open": open_,
            "high": np.round(np.maximum(open_, close) + wick[0], 2),
            "low": np.round(np.minimum(open_, close) - wick[1], 2),
            "close": close,
            "volume": np.round(rng.lognormal(2, 1, n), 5),
        }
    )


def write_files(directory: Path, bars: int, streams: int) -> list[Path]:
    per_stream = bars // streams
    paths = []
    for i in range(streams):
        path = directory / f"S{i:02d}_USDT-1m.feather"
        synthetic_frame(per_stream, seed=i).to_feather(path)
        paths.append(path)
    return paths


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def bare_consumer(url: str, streams: list[str], total: int, group: str) -> float:
    client = aioredis.Redis.from_url(url)
    for stream in streams:
        await client.xgroup_create(stream, group, id="0")
    started = time.perf_counter()
    done, acks = 0, {}
    while done < total:
        async with client.pipeline(transaction=False) as pipe:
            for stream, ids in acks.items():
                pipe.xack(stream, group, *ids)
            pipe.xreadgroup(group, "bare", dict.fromkeys(streams, ">"), count=1000, block=100)
            reply = (await pipe.execute())[-1]
        acks = {stream: [entry_id for entry_id, _ in entries] for stream, entries in reply}
        done += sum(len(ids) for ids in acks.values())
    for stream, ids in acks.items():
        await client.xack(stream, group, *ids)
    elapsed = time.perf_counter() - started
    await client.aclose()
    return total / elapsed


async def full_path(url: str, streams: list[str], total: int, group: str) -> tuple[float, list]:
    symbols = tuple(KEYS.parse_bars(s)[0] for s in streams)  # type: ignore[index]
    with tempfile.TemporaryDirectory(prefix="qd-bench-") as data_dir:
        config = Config(
            redis=RedisConfig(url=url),
            storage=StorageConfig(data_dir=Path(data_dir)),
            ingest=IngestConfig(symbols=symbols, timeframes=("1m",), group=group),
        )
        client = aioredis.Redis.from_url(url)
        memory: list[float] = []
        with BarStore.in_dir(data_dir) as store:
            async with IngestService(config, client, store, IngestMetrics()) as service:
                stop = asyncio.Event()
                started = time.perf_counter()
                task = asyncio.create_task(service.run(stop))
                while service.totals.entries < total and not task.done():
                    memory.append(rss_mb())
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                stop.set()
                await task  # raises whatever ended the ingest early
            assert store.count() == total, (store.count(), total)
        await client.aclose()
    return total / elapsed, memory


def measure(url: str, streams: list[str], total: int, run: int) -> dict:
    bare = uvloop.run(bare_consumer(url, streams, total, f"bare-{run}"))
    full, memory = uvloop.run(full_path(url, streams, total, f"full-{run}"))
    return {"bare": bare, "full": full, "rss_mb": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=500_000)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line at the end")
    args = parser.parse_args()
    configure_logging("warning")
    total = args.bars // args.streams * args.streams
    with tempfile.TemporaryDirectory(prefix="qd-bench-files-") as tmp, running_redis() as server:
        paths = write_files(Path(tmp), total, args.streams)
        client = redis.Redis.from_url(server.url)
        published = replay_files(client, KEYS, paths)
        print(
            f"replay: {published.bars:,} bars in {published.seconds:.2f}s "
            f"= {published.per_s:,.0f} bars/s",
            file=sys.stderr,
        )
        runs = []
        for run in range(args.repeats):
            runs.append(measure(server.url, list(published.streams), total, run))
            print(
                f"run {run}: bare {runs[-1]['bare']:,.0f}/s, full {runs[-1]['full']:,.0f}/s, "
                f"ratio {runs[-1]['full'] / runs[-1]['bare']:.2f}",
                file=sys.stderr,
            )
    report(runs, published.per_s, total, args)
    return 0


def report(runs: list[dict], replay_per_s: float, total: int, args: argparse.Namespace) -> None:
    bare = statistics.median(r["bare"] for r in runs)
    full = statistics.median(r["full"] for r in runs)
    memory = runs[-1]["rss_mb"]
    quarter = max(1, len(memory) // 4)
    result = {
        "bars": total,
        "streams": args.streams,
        "repeats": args.repeats,
        "bare_bars_per_s": round(bare),
        "full_bars_per_s": round(full),
        "ratio": round(full / bare, 3),
        "ratio_per_run_median": round(statistics.median(r["full"] / r["bare"] for r in runs), 3),
        "replay_bars_per_s": round(replay_per_s),
        "rss_mb_first_quarter_max": round(max(memory[:quarter]), 1),
        "rss_mb_last_quarter_max": round(max(memory[-quarter:]), 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"bars: {total:,} over {args.streams} streams, median of {args.repeats} runs")
    print(f"bare consumer (XREADGROUP COUNT 1000 + XACK): {bare:>10,.0f} bars/s")
    print(f"full ingest path (decode, validate, store, ack): {full:>7,.0f} bars/s")
    print(
        f"ratio full/bare: {full / bare:.2f} "
        f"(median of the per-run ratios {result['ratio_per_run_median']:.2f})"
    )
    print(f"replay publisher: {replay_per_s:,.0f} bars/s")
    print(
        f"process RSS during the last full run: first quarter max "
        f"{result['rss_mb_first_quarter_max']} MB, last quarter max "
        f"{result['rss_mb_last_quarter_max']} MB"
    )


if __name__ == "__main__":
    raise SystemExit(main())
