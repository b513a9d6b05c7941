"""Bar arrival to signal: how long, with all six families live, while a
training job runs?

Runs the daemon's own ingest and inference steps in-process on uvloop (the
``IngestService`` reading ``quantum:bars:BTCUSDT:1h`` from a private
redis-server into the SQLite bar store, its ``on_stored`` hook, the
``InferenceService`` with its spawn worker), and a training pool (the
daemon's ``ProcessPool``: spawn workers at nice +10) that keeps one real
training job running the whole time (``--train-family``, default ``nhits``;
``--train-jobs 2`` keeps two, both cores busy), into a scratch folder so the
live registry does not change.

Set-up (skipped when ``--data-dir`` already holds active versions): the real
BTC/USDT 1h bars of ``../shared/data/market``; the first ``--history`` bars
go into the store and train one version of each of the six families through
the same pool (``run_job``, hyper-parameters shrunk to train in a minute).

Measurement: ``--bars`` further bars are published one at a time, as a
publisher would (XADD), each once the previous bar's signal has been read;
the first ``--warmup`` are not counted. Three latencies per bar:

- ``arrival_to_signal``: publisher's XADD returned -> the signal read back
  by a client blocked on ``quantum:signals:BTCUSDT:1h`` (what a consumer sees);
- ``stored_to_signal``: the ``latency_ms`` the daemon writes into the signal
  (ingest committed the bar -> signal built, just before its XADD);
- ``worker``: time inside the inference worker (read bars, features once,
  six models), and the CPU time it used: the difference is time spent
  waiting for a core.

    .venv/bin/python scripts/bench_latency.py [--bars 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop
from prometheus_client import CollectorRegistry

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.core.promotion import Verdict
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import (
    Config,
    IngestConfig,
    ModelsConfig,
    RedisConfig,
    StorageConfig,
)
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference import InferenceService
from quantum_daemon.ingest import IngestMetrics, IngestService
from quantum_daemon.runtime.logs import configure_logging
from quantum_daemon.storage.bar_files import read_bar_file
from quantum_daemon.storage.bar_store import Bar, BarStore
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.jobs import TrainJobSpec, run_job
from quantum_daemon.training.pool import PoolSettings, ProcessPool
from quantum_daemon_dev.redis_server import running_redis

REPO = Path(__file__).resolve().parents[1]
MARKET = REPO.parent / "shared" / "data" / "market" / "BTC_USDT-1h.feather"
FAMILIES = ("xgb", "lgbm", "nhits", "patchtst", "evo_model", "rl_sizer")
SYMBOL, TF = "BTCUSDT", "1h"
# Set-up versions train in about a minute each on one core; quality is not the point here.
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "xgb": {"num_boost_round": 200},
    "lgbm": {},
    "nhits": {"max_steps": 60},
    "patchtst": {"max_steps": 60},
    "evo_model": {"max_evaluations": 600},
    "rl_sizer": {"total_timesteps": 4096, "eval_every": 2048},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bars", type=int, default=300, help="bars measured (after warm-up)")
    parser.add_argument("--warmup", type=int, default=10, help="first bars not counted")
    parser.add_argument("--history", type=int, default=2105, help="bars before the first one")
    parser.add_argument("--data-dir", help="keep the store and models here (reused next time)")
    parser.add_argument("--train-family", default="nhits", help="the job that runs meanwhile")
    parser.add_argument("--train-jobs", type=int, default=1, help="jobs at once (2: both cores)")
    parser.add_argument("--no-training", action="store_true", help="measure without a job")
    parser.add_argument("--pause-ms", type=float, default=20.0, help="between signal and next bar")
    parser.add_argument("--market", default=str(MARKET))
    parser.add_argument("--json", help="write the summary here")
    return parser.parse_args()


def load_market(path: Path) -> Bars:
    frame = read_bar_file(path).frame
    return Bars.from_frame(frame, SYMBOL, TF)


def to_rows(bars: Bars, start: int, stop: int) -> list[Bar]:
    return [
        Bar(SYMBOL, TF, int(bars.ts[i]), float(bars.open[i]), float(bars.high[i]),
            float(bars.low[i]), float(bars.close[i]), float(bars.volume[i]))
        for i in range(start, stop)
    ]  # fmt: skip


def bench_config(redis_url: str, data_dir: Path) -> Config:
    return Config(
        redis=RedisConfig(url=redis_url),
        storage=StorageConfig(data_dir=data_dir),
        ingest=IngestConfig(symbols=(SYMBOL,), timeframes=(TF,), block_ms=200),
        models=ModelsConfig(families=FAMILIES[:4], symbols=(SYMBOL,), timeframes=(TF,)),
    )


# -- set-up: six active versions -------------------------------------------------------


def missing_families(data_dir: Path) -> list[str]:
    registry = Registry(data_dir)
    return [f for f in FAMILIES if registry.active_version(f"{f}_{SYMBOL}_{TF}") is None]


async def train_missing(cfg: Config, bars: Bars, families: list[str]) -> None:
    settings = replace(PoolSettings.from_config(cfg, gpu_present=False), cpu_workers=2)
    registry = Registry(cfg.storage.data_dir)
    slots = asyncio.Semaphore(settings.cpu_workers)
    async with ProcessPool(settings) as pool:
        jobs = [_train_one(pool, slots, cfg, bars, family, registry) for family in families]
        await asyncio.gather(*jobs)


async def _train_one(
    pool: ProcessPool,
    slots: asyncio.Semaphore,
    cfg: Config,
    bars: Bars,
    family: str,
    registry: Registry,
) -> None:
    async with slots:
        await _train_in(pool, cfg, bars, family, registry)


async def _train_in(
    pool: ProcessPool, cfg: Config, bars: Bars, family: str, registry: Registry
) -> None:
    spec = TrainJobSpec(
        job_id=f"setup-{family}",
        family=family,
        bars=bars,
        data_dir=str(cfg.storage.data_dir),
        version_time=datetime.now(UTC).replace(microsecond=0),
        evaluation=replace(cfg.evaluation, n_test_windows=1),
        params=QUICK_PARAMS[family],
        timeout_s=1800,
    )
    outcome = await pool.run(run_job, spec, family=family, job_id=spec.job_id, timeout_s=1800)
    if not outcome.ok:
        raise RuntimeError(f"training {family} failed: {outcome.reason}\n{outcome.detail}")
    result = outcome.result
    registry.register(result.model_id, result.version)
    registry.apply_verdict(result.model_id, result.version, Verdict("candidate", (), True, "bench"))
    print(f"  trained {result.model_id} {result.version} in {outcome.seconds:.0f}s", flush=True)


# -- the training job that runs during the measurement ----------------------------------


async def keep_training(
    cfg: Config, bars: Bars, family: str, lanes: int, stop: asyncio.Event
) -> int:
    """Keep ``lanes`` jobs running at once, one after another in each lane, in a
    scratch folder until ``stop``; jobs completed."""
    settings = replace(PoolSettings.from_config(cfg, gpu_present=False), cpu_workers=lanes)
    with tempfile.TemporaryDirectory(prefix="bench-latency-train-") as scratch:
        async with ProcessPool(settings) as pool:
            done = await asyncio.gather(
                *(_training_lane(pool, cfg, bars, family, lane, scratch, stop)
                  for lane in range(lanes))
            )  # fmt: skip
    return sum(done)


async def _training_lane(
    pool: ProcessPool,
    cfg: Config,
    bars: Bars,
    family: str,
    lane: int,
    scratch: str,
    stop: asyncio.Event,
) -> int:
    done = 0
    while not stop.is_set():
        spec = TrainJobSpec(
            job_id=f"busy-{lane}-{done}",
            family=family,
            bars=bars,
            data_dir=str(Path(scratch) / f"lane-{lane}"),
            version_time=datetime.now(UTC).replace(microsecond=0),
            evaluation=cfg.evaluation,
            seed=42 + lane,
            timeout_s=3600,
        )
        job = asyncio.ensure_future(
            pool.run(run_job, spec, family=family, job_id=spec.job_id, timeout_s=3600)
        )
        halt = asyncio.ensure_future(stop.wait())
        await asyncio.wait({job, halt}, return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        if not job.done():
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
            break
        done += 1 if job.result().ok else 0
    return done


# -- measurement -------------------------------------------------------------------------


async def measure(cfg: Config, bars: Bars, args: argparse.Namespace) -> dict[str, Any]:
    keys = Keys(cfg.redis.prefix)
    client = aioredis.Redis.from_url(cfg.redis.url)
    publisher = aioredis.Redis.from_url(cfg.redis.url)
    reader = aioredis.Redis.from_url(cfg.redis.url)
    store = BarStore.in_dir(cfg.storage.data_dir)
    ingest = IngestService(cfg, client, store, IngestMetrics(CollectorRegistry()))
    inference = InferenceService(cfg, client, store, CollectorRegistry())
    ingest.on_stored.append(inference.bars_stored)
    stop, training_stop = asyncio.Event(), asyncio.Event()
    rows: list[dict[str, float]] = []
    async with ingest, inference:
        await inference.link.ready.wait()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ingest.run(stop), name="ingest")
            for name, loop in inference.loops().items():
                tg.create_task(loop(stop), name=name)
            trainer = None
            if not args.no_training:
                history = bars.slice(0, args.history)
                trainer = tg.create_task(
                    keep_training(cfg, history, args.train_family, args.train_jobs, training_stop)
                )
                await asyncio.sleep(5.0)  # the job is past its start-up
            start = args.history
            for i in range(start, start + args.warmup + args.bars):
                rows.append(await one_bar(publisher, reader, keys, bars, i, inference))
                await asyncio.sleep(args.pause_ms / 1000)
            training_stop.set()
            jobs = await trainer if trainer is not None else 0
            stop.set()
    status = inference.status()
    for c in (client, publisher, reader):
        await c.aclose()
    store.close()
    return summarize(rows[args.warmup :], rows[: args.warmup], status, jobs, args)


async def one_bar(
    publisher: aioredis.Redis,
    reader: aioredis.Redis,
    keys: Keys,
    bars: Bars,
    i: int,
    inference: InferenceService,
) -> dict[str, float]:
    stream = keys.signals(SYMBOL, TF)
    last = await reader.xrevrange(stream, count=1)
    after = last[0][0] if last else b"0-0"
    fields = {
        "ts": str(int(bars.ts[i])),
        **{k: repr(float(getattr(bars, k)[i])) for k in ("open", "high", "low", "close", "volume")},
    }
    await publisher.xadd(keys.bars(SYMBOL, TF), fields)  # type: ignore[arg-type]
    sent = time.perf_counter()
    while True:
        reply = await reader.xread({stream: after}, block=30_000)
        if not reply:
            raise RuntimeError(f"no signal for bar {i} within 30 s")
        entry_id, entry = reply[0][1][-1]
        signal = parse_signal(entry)
        if signal.ts == int(bars.ts[i]):
            break
        after = entry_id
    seen = time.perf_counter()
    return {
        "arrival_to_signal_ms": (seen - sent) * 1000,
        "stored_to_signal_ms": signal.latency_ms,
        "position_source": 1.0 if signal.position_source == "rl_sizer" else 0.0,
        "families": float(len(signal.versions)),
        "worker_sum_s": _histogram_sum(inference.metrics.worker_seconds),
        "worker_cpu_sum_s": _histogram_sum(inference.metrics.worker_cpu_seconds),
    }


def _histogram_sum(histogram: Any) -> float:
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                return float(sample.value)
    return 0.0


def summarize(
    rows: list[dict[str, float]],
    warmup: list[dict[str, float]],
    status: dict[str, Any],
    jobs: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    previous = [*warmup[-1:], *rows][:-1]
    busy = f"{args.train_jobs} x {args.train_family}"

    def per_bar(key: str) -> list[float]:
        return [(b[key] - a[key]) * 1000 for a, b in zip(previous, rows, strict=True)]

    return {
        "machine_cores": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "bars": len(rows),
        "families_in_signal": sorted({int(r["families"]) for r in rows}),
        "sized_by_rl_sizer": all(r["position_source"] == 1.0 for r in rows),
        "training": "none" if args.no_training else f"{busy} ({jobs} jobs done)",
        "arrival_to_signal_ms": quantiles([r["arrival_to_signal_ms"] for r in rows]),
        "stored_to_signal_ms": quantiles([r["stored_to_signal_ms"] for r in rows]),
        "worker_ms": quantiles(per_bar("worker_sum_s")),
        "worker_cpu_ms": quantiles(per_bar("worker_cpu_sum_s")),
        "warmup_max_ms": round(max((r["arrival_to_signal_ms"] for r in warmup), default=0.0), 2),
        "models": [f"{m['model_id']}@{m['version']}" for m in status["models"]],
    }


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(ordered[-1], 2)}


async def run(args: argparse.Namespace, redis_url: str, data_dir: Path) -> dict[str, Any]:
    cfg = bench_config(redis_url, data_dir)
    bars = load_market(Path(args.market))
    if len(bars) < args.history + args.warmup + args.bars:
        raise SystemExit(f"{args.market} has {len(bars)} bars; need history + warmup + bars")
    store = BarStore.in_dir(data_dir)
    if store.count(SYMBOL, TF) < args.history:
        store.insert_bars(to_rows(bars, 0, args.history))
    store.close()
    missing = missing_families(data_dir)
    if missing:
        print(f"training {missing} on {args.history} bars (once per --data-dir)", flush=True)
        await train_missing(cfg, bars.slice(0, args.history), missing)
    _forget_live_bars(data_dir, int(bars.ts[args.history - 1]))
    return await measure(cfg, bars, args)


def _forget_live_bars(data_dir: Path, last_history_ts: int) -> None:
    """A reused folder: drop the bars and records of the previous run's live
    part, so the same bars arrive as new again."""
    import sqlite3

    from quantum_daemon.storage.bar_store import DB_FILENAME
    from quantum_daemon.storage.prediction_records import RECORDS_FILE

    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        conn.execute("DELETE FROM bars WHERE ts > ?", (last_history_ts,))
        conn.execute(
            "UPDATE series SET count = (SELECT COUNT(*) FROM bars b WHERE b.symbol = series.symbol"
            " AND b.tf = series.tf), last_ts = ?",
            (last_history_ts,),
        )
    (data_dir / RECORDS_FILE).unlink(missing_ok=True)


def main() -> int:
    args = parse_args()
    configure_logging("warning", "console")
    with running_redis() as server, tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        report = uvloop.run(run(args, server.url, data_dir))
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
