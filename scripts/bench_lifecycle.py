"""How many model versions per hour does the continuous-learning loop train and
evaluate for the configured zoo on this machine, how busy are its workers,
and does the event loop stay responsive while they work?

Runs the real ``LifecycleService`` (the daemon's training step: scheduler,
spawn pool, ``run_job`` with the real families, registry, promotion, events
on a private redis-server) in-process on uvloop, over the bundled real bars,
with the daemon's own loop-lag probe (a 50 ms sleeper, as ``/metrics``
measures it). Every model trains ``--rounds`` times (start-up, then operator
requests). Prints a summary and writes it as JSON with ``--json``.

    .venv/bin/python scripts/bench_lifecycle.py [--config config.toml] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop
from prometheus_client import CollectorRegistry

from quantum_daemon.domain import config as config_mod
from quantum_daemon.domain.ids import model_keys
from quantum_daemon.lifecycle.service import LifecycleService
from quantum_daemon.runtime.logs import configure_logging
from quantum_daemon.storage.bar_files import read_bar_file
from quantum_daemon.storage.bar_store import Bar, BarStore
from quantum_daemon_dev.redis_server import running_redis

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "quantum_daemon" / "data"
PROBE_S = 0.05  # the daemon's loop_lag_monitor interval


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "config.toml"))
    parser.add_argument("--rounds", type=int, default=1, help="versions per model")
    parser.add_argument("--data", default=str(DATA), help="folder of Freqtrade bar files")
    parser.add_argument("--families", nargs="*", help="override [models] families")
    parser.add_argument("--json", help="write the summary here")
    return parser.parse_args()


def load_bars(store: BarStore, folder: Path, symbols: tuple[str, ...], tf: str) -> dict[str, int]:
    loaded = {}
    for path in sorted(folder.glob(f"*-{tf}.feather")):
        bar_file = read_bar_file(path)
        if bar_file.symbol not in symbols:
            continue
        f = bar_file.frame
        rows = [
            Bar(bar_file.symbol, tf, int(t), float(o), float(h), float(lo), float(c), float(v))
            for t, o, h, lo, c, v in zip(
                f["ts"], f["open"], f["high"], f["low"], f["close"], f["volume"], strict=True
            )
        ]
        store.insert_bars(rows)
        loaded[bar_file.symbol] = len(rows)
    return loaded


class LagProbe:
    """Loop lag samples, each tagged with how many CPU jobs were running."""

    def __init__(self, svc: LifecycleService) -> None:
        self.svc = svc
        self.samples: list[tuple[float, int]] = []

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            start = loop.time()
            await asyncio.sleep(PROBE_S)
            lag = max(0.0, loop.time() - start - PROBE_S)
            self.samples.append((lag, self._cpu_busy()))

    def _cpu_busy(self) -> int:
        lanes = self.svc.executor.snapshot().get("lanes", {})
        return len(lanes.get("cpu", {}).get("busy", []))


async def bench(cfg: config_mod.Config, rounds: int) -> dict[str, Any]:
    m = cfg.models
    keys = [k.model_id for k in model_keys(m.families, m.symbols, m.timeframes)]
    client = aioredis.Redis.from_url(cfg.redis.url)
    store = BarStore.in_dir(cfg.storage.data_dir)
    started = time.monotonic()
    async with LifecycleService(cfg, client, store, CollectorRegistry()) as svc:
        probe = LagProbe(svc)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            for name, factory in svc.loops().items():
                tg.create_task(factory(stop), name=name)
            tg.create_task(probe.run(stop), name="lag-probe")
            await drive(svc, keys, rounds)
            wall = time.monotonic() - started
            busy = svc.executor.busy_seconds()
            stop.set()
        report = summarize(svc, probe, wall, busy, cfg)
    await client.aclose()
    store.close()
    return report


async def drive(svc: LifecycleService, keys: list[str], rounds: int) -> None:
    """Wait for every model's jobs; ask for the next round when one ends."""
    seen = 0
    while True:
        finished = list(svc.recent)
        for record in finished[seen:]:
            count = sum(1 for r in finished if r.model_id == record.model_id)
            if count < rounds:
                svc.loop.request(record.model_id)
            print(
                f"  {record.model_id:24s} {record.status:9s} {record.seconds:7.1f}s "
                f"stage={record.stage} reason={record.reason}",
                flush=True,
            )
        seen = len(finished)
        if seen >= rounds * len(keys):
            return
        await asyncio.sleep(0.5)


def summarize(
    svc: LifecycleService, probe: LagProbe, wall: float, busy: float, cfg: config_mod.Config
) -> dict[str, Any]:
    records = list(svc.recent)
    workers = sum(lane["workers"] for lane in svc.executor.snapshot().get("lanes", {}).values())
    workers = workers or cfg.training.workers
    both_busy = [lag for lag, n in probe.samples if n >= min(2, cfg.training.workers)]
    return {
        "machine_cores": _cores(),
        "workers": workers,
        "wall_s": round(wall, 1),
        "jobs": len(records),
        "completed": sum(1 for r in records if r.status == "completed"),
        "failed": sum(1 for r in records if r.status == "failed"),
        "versions_per_hour": round(3600 * len(records) / wall, 1),
        "worker_busy_share": round(busy / (wall * workers), 3),
        "by_family": _by_family(records),
        "stages": {r.model_id + "@" + r.version: r.stage for r in records},
        "loop_lag_ms": {
            "all": _quantiles([lag for lag, _ in probe.samples]),
            "cpu_workers_all_busy": _quantiles(both_busy),
        },
    }


def _by_family(records: list[Any]) -> dict[str, Any]:
    families: dict[str, list[float]] = {}
    for r in records:
        families.setdefault(r.family, []).append(r.seconds or 0.0)
    return {
        f: {"jobs": len(s), "mean_s": round(statistics.mean(s), 1), "max_s": round(max(s), 1)}
        for f, s in families.items()
    }


def _quantiles(lags: list[float]) -> dict[str, float]:
    if not lags:
        return {"samples": 0}
    ordered = sorted(lags)

    def q(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {"samples": len(ordered), "p50": q(0.5), "p99": q(0.99), "max": q(1.0)}


def _cores() -> int:
    import os

    return os.cpu_count() or 0


def main() -> int:
    args = parse_args()
    configure_logging("warning", "console")
    base = config_mod.load(args.config)
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-") as tmp, running_redis() as server:
        models = base.models
        if args.families:
            models = replace(models, families=tuple(args.families))
        cfg = replace(
            base,
            redis=replace(base.redis, url=server.url),
            storage=replace(base.storage, data_dir=Path(tmp)),
            models=models,
        )
        with BarStore.in_dir(cfg.storage.data_dir) as store:
            for tf in cfg.models.timeframes:
                print(f"==> bars: {load_bars(store, Path(args.data), cfg.models.symbols, tf)}")
        print(
            f"==> {len(cfg.models.families) * len(cfg.models.symbols)} models x {args.rounds} "
            f"round(s), {cfg.training.workers} CPU workers",
            flush=True,
        )
        report = uvloop.run(bench(cfg, args.rounds))
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
