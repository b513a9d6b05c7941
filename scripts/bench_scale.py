"""Many series through real daemons: ingest rate, bar-to-signal latency,
scheduler queue and memory per series, for N synthetic series on 1m and 1h.

Each run (one ``--series`` count on one ``--tf``) starts its own
redis-server on a free port and ``--daemons`` real ``quantum-daemon run``
processes on it (each with its own data dir and API port, the same ingest
consumer group), configured for the N series (``[ingest]`` and ``[models]``
symbols, family ``xgb``, one training worker at nice +10). Before the
daemons start, every data dir holds an active ``xgb_{SYMBOL}_{TF}`` version
for each series (copies of one version trained once per timeframe on
synthetic bars: one model per series, as the zoo has it): each series gets
a signal from its first bar on, and the scheduler queues a new version for
each series once its history is in (the queue the run reports; one
training job runs during the measurement).

1. History: ``--history`` random-walk bars per series are published at once
   (pipelined XADD); the ingest rate is history bars / seconds until the
   consumer group has read and acknowledged every entry (XINFO GROUPS:
   ingest acknowledges a batch once its bars are committed).
2. Rounds: ``--rounds`` times, one new bar of every series is published in
   one pipeline (the series closing on the same bar), and the signal of
   each is read back (XREAD over the N signal streams): arrival to signal
   is the publisher's pipeline return to the signal read; ``stored_to_signal``
   is the daemon's own ``latency_ms``. The first ``--warmup`` rounds are not
   counted. Between rounds: ``--gap-s``.
3. Memory: RSS of the daemon and of its inference worker (``/proc``) and
   Redis ``used_memory`` after the rounds; per series is the difference to
   the smallest run of the same timeframe divided by the difference in
   series. Scheduler queue: ``quantum_training_jobs_queued`` sampled every
   round (max and last).

Baselines in the same process: the per-bar feature cost of a 513-bar live
window, numpy newest row (this code) against the pandas rolling path it
replaced (``features.pandas_rolling``), medians; and with ``--baseline``,
each run is repeated with ``[inference] batch_bars = 1`` (one worker
request per series, the way before batching).

``--daemons 2`` runs two daemons on the same Redis and consumer group.
Until series ownership lands (branch ``owners``), the group hands each bar
entry to whichever daemon reads first: each daemon sees a part of each
series, so its figures say what two daemons cost, not what they serve
(docs/scaling.md).

    .venv/bin/python scripts/bench_scale.py                     # 10,100,1000 x 1m,1h
    .venv/bin/python scripts/bench_scale.py --series 100 --tf 1m --baseline --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from quantum_daemon.core import features
from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.core.promotion import Verdict
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import EvaluationConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.ingest.replay import PackedPipeline, encode_rows, xadd_commands
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.jobs import TrainJobSpec, run_job
from quantum_daemon_dev.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
KEYS = Keys()
FAMILY = "xgb"
TRAIN_BARS = 1500
XREAD_BLOCK_MS = 50


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", default="10,100,1000", help="comma-separated series counts")
    p.add_argument("--tf", default="1m,1h", help="comma-separated timeframes")
    p.add_argument("--history", type=int, default=300, help="bars per series before the rounds")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gap-s", type=float, default=0.5, help="pause between rounds")
    p.add_argument("--daemons", type=int, default=1, choices=(1, 2))
    p.add_argument("--batch-bars", type=int, default=256, help="[inference] batch_bars")
    p.add_argument("--baseline", action="store_true", help="also run with batch_bars = 1")
    p.add_argument("--no-training", action="store_true", help="no per-series training")
    p.add_argument("--timeout-s", type=float, default=300.0, help="per phase of a run")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args()


# -- synthetic bars ---------------------------------------------------------------------


def symbols(n: int) -> list[str]:
    return [f"S{i:04d}USDT" for i in range(n)]


def random_walk(n: int, tf: str, seed: int, end_ms: int, symbol: str = "multi") -> Bars:
    """``n`` bars whose last opens at ``end_ms``: ingest refuses bars from the future."""
    rng = np.random.default_rng(seed)
    step = timeframe_ms(tf)
    close = 100.0 * np.exp(np.cumsum(0.002 * rng.standard_normal(n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.standard_normal(n)) * 0.001
    high, low = np.maximum(open_, close) * (1 + spread), np.minimum(open_, close) * (1 - spread)
    volume = rng.lognormal(3.0, 0.5, n)
    ts = end_ms - step * np.arange(n - 1, -1, -1, dtype=np.int64)
    return Bars(symbol, tf, ts, open_, high, low, close, volume)


def frame(bars: Bars, start: int, stop: int) -> pd.DataFrame:
    cols = ("ts", "open", "high", "low", "close", "volume")
    return pd.DataFrame({c: getattr(bars, c)[start:stop] for c in cols})


def last_closed_open(tf: str, bars_ahead: int) -> int:
    """Open time of the bar ``bars_ahead`` before the newest one that has closed now."""
    step = timeframe_ms(tf)
    return (int(time.time() * 1000) // step - 1 - bars_ahead) * step


# -- the per-bar feature cost (in process) ------------------------------------------------


def feature_cost(repeats: int = 400) -> dict[str, float]:
    """Medians of the three ways, interleaved call by call so that the
    machine's other load falls on each alike."""
    window = random_walk(513, "1m", 7, last_closed_open("1m", 0))

    def pandas_path() -> None:
        with features.pandas_rolling():
            features.build_features(window)

    ways = {
        "numpy_newest_row_ms": lambda: features.build_features(window, 512),
        "numpy_all_rows_ms": lambda: features.build_features(window),
        "pandas_ms": pandas_path,
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for k in range(repeats + 20):
        for name, way in ways.items():
            t = time.perf_counter()
            way()
            if k >= 20:  # warm-up: imports, caches
                times[name].append(time.perf_counter() - t)
    out = {name: statistics.median(t) * 1000.0 for name, t in times.items()}
    out["ratio_pandas_to_numpy_newest"] = out["pandas_ms"] / out["numpy_newest_row_ms"]
    out["ratio_pandas_to_numpy_all_rows"] = out["pandas_ms"] / out["numpy_all_rows_ms"]
    return out


# -- set-up ----------------------------------------------------------------------------


def train_template(tf: str, root: Path) -> Path:
    """A data dir holding one ``xgb_multi_{tf}`` version, the one every
    series' model is a copy of (``one_model_per_series``)."""
    data_dir = root / f"template-{tf}"
    if data_dir.exists():
        return data_dir
    bars = random_walk(TRAIN_BARS, tf, 1, last_closed_open(tf, 10_000))
    spec = TrainJobSpec(
        job_id=f"bench-scale-{tf}",
        family=FAMILY,
        bars=bars,
        data_dir=str(data_dir),
        version_time=datetime.now(UTC).replace(microsecond=0),
        evaluation=replace(EvaluationConfig(), n_test_windows=1),
        params={"num_boost_round": 100},
    )
    result = run_job(spec)
    registry = Registry(data_dir)
    registry.register(result.model_id, result.version)
    registry.apply_verdict(result.model_id, result.version, Verdict("candidate", (), True, "bench"))
    print(f"  trained {result.model_id} {result.version}", flush=True)
    return data_dir


def one_model_per_series(template: Path, data_dir: Path, names: list[str], tf: str) -> None:
    """``data_dir`` with the template's version active for every series as
    ``xgb_{SYMBOL}_{tf}`` (a copy of its files each, the metadata naming the
    series), as a zoo of one model per series would have it: the worker
    loads one model per series and the registry holds one state per model."""
    source_id = f"{FAMILY}_multi_{tf}"
    (version_dir,) = (template / "models" / source_id).glob("v*")
    registry = Registry(data_dir)
    for name in names:
        model_id = f"{FAMILY}_{name}_{tf}"
        target = data_dir / "models" / model_id / version_dir.name
        shutil.copytree(version_dir, target)
        meta_path = target / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta.update(model_id=model_id, symbol=name)
        meta_path.write_text(json.dumps(meta))
        registry.register(model_id, version_dir.name)
        verdict = Verdict("candidate", (), True, "bench")
        registry.apply_verdict(model_id, version_dir.name, verdict)


def config_text(
    redis_url: str,
    data_dir: Path,
    port: int,
    names: list[str],
    tf: str,
    batch_bars: int,
    history: int,
    training: bool,
) -> str:
    listed = json.dumps(names)
    model_symbols = listed if training else "[]"
    return f"""
[redis]
url = "{redis_url}"
[storage]
data_dir = "{data_dir}"
[api]
port = {port}
[logging]
level = "warning"
[ingest]
symbols = {listed}
timeframes = ["{tf}"]
block_ms = 100
[models]
families = ["{FAMILY}"]
symbols = {model_symbols}
timeframes = ["{tf}"]
[training]
workers = 1
history_bars = {history}
[evaluation]
n_test_windows = 1
[inference]
batch_bars = {batch_bars}
"""


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return bytes(r.read())

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.get("/api/status")))

    def metric(self, name: str) -> float:
        """Sum of a metric's samples in ``/metrics`` (every label set)."""
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def worker_pid(self) -> int | None:
        pid = self.status().get("inference", {}).get("worker", {}).get("pid")
        return int(pid) if pid else None

    def ready(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            worker = self.status().get("inference", {}).get("worker", {})
            return bool(worker.get("ready"))
        return False


def start_daemon(config: Path, log: Path, port: int) -> Daemon:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NOTIFY_SOCKET", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quantum_daemon", "--config", str(config), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    return Daemon(proc, port, log)


def stop_daemon(daemon: Daemon) -> None:
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(timeout=10)


def wait_until(check: Any, timeout_s: float, what: str, daemons: list[Daemon]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        for d in daemons:
            if d.proc.poll() is not None:
                tail = d.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"daemon exited ({d.proc.returncode}) while {what}:\n{tail}")
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout_s:.0f}s")


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


# -- one run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    series: int
    tf: str
    batch_bars: int
    daemons: int


@contextlib.contextmanager
def daemons_on(
    redis_url: str,
    spec: RunSpec,
    template: Path,
    root: Path,
    args: argparse.Namespace,
    names: list[str],
) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        for k in range(spec.daemons):
            data_dir = root / f"data-{k}"
            one_model_per_series(template, data_dir, names, spec.tf)
            port = free_port()
            config = root / f"config-{k}.toml"
            config.write_text(
                config_text(
                    redis_url,
                    data_dir,
                    port,
                    names,
                    spec.tf,
                    spec.batch_bars,
                    args.history,
                    not args.no_training,
                )
            )
            started.append(start_daemon(config, root / f"daemon-{k}.log", port))
        wait_until(lambda: all(d.ready() for d in started), args.timeout_s, "starting", started)
        yield started
    finally:
        for d in started:
            stop_daemon(d)


def publish(client: redis.Redis, batches: list[tuple[str, pd.DataFrame]]) -> None:
    """Every (stream, bars) in one pipelined write."""
    commands = [c for stream, f in batches for c in xadd_commands(stream, encode_rows(f), None)]
    pipeline = PackedPipeline(client)
    for start in range(0, len(commands), 10_000):
        pipeline.execute(commands[start : start + 10_000])


def read_signals(
    client: redis.Redis,
    names: list[str],
    tf: str,
    ts: int,
    last_ids: dict[str, str],
    deadline: float,
) -> dict[str, tuple[float, float]]:
    """(seen at, latency_ms) of each series' signal for bar ``ts``."""
    seen: dict[str, tuple[float, float]] = {}
    streams = {KEYS.signals(s, tf): s for s in names}
    while len(seen) < len(names) and time.monotonic() < deadline:
        wanted = {k: last_ids[k] for k, s in streams.items() if s not in seen}
        for key, entries in client.xread(wanted, block=XREAD_BLOCK_MS) or []:
            key = key.decode() if isinstance(key, bytes) else key
            now = time.perf_counter()
            for entry_id, fields in entries:
                last_ids[key] = entry_id
                sig = parse_signal(fields)
                if sig.ts == ts:
                    seen[streams[key]] = (now, sig.latency_ms)
    return seen


def run_one(spec: RunSpec, template: Path, args: argparse.Namespace) -> dict[str, Any]:
    names = symbols(spec.series)
    rounds = args.rounds
    end_ms = last_closed_open(spec.tf, 0)
    markets = {
        s: random_walk(args.history + rounds, spec.tf, 100 + i, end_ms, s)
        for i, s in enumerate(names)
    }
    root = Path(tempfile.mkdtemp(prefix="qd-scale-"))
    (root / "redis").mkdir()
    server = RedisServer(directory=root / "redis").start()
    try:
        client = redis.Redis.from_url(server.url)
        with daemons_on(server.url, spec, template, root, args, names) as daemons:
            return measure(spec, args, client, daemons, names, markets)
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def measure(
    spec: RunSpec,
    args: argparse.Namespace,
    client: redis.Redis,
    daemons: list[Daemon],
    names: list[str],
    markets: dict[str, Bars],
) -> dict[str, Any]:
    history, tf = args.history, spec.tf
    total = spec.series * history

    def ingested() -> bool:
        time.sleep(0.2)  # asked of Redis, not of the daemons: their loops stay unperturbed
        return streams_drained(client, [KEYS.bars(s, tf) for s in names])

    started = time.perf_counter()
    publish(client, [(KEYS.bars(s, tf), frame(markets[s], 0, history)) for s in names])
    wait_until(ingested, args.timeout_s, "ingesting the history", daemons)
    ingest_s = time.perf_counter() - started
    last_ids = {KEYS.signals(s, tf): "0-0" for s in names}
    first = read_signals(
        client,
        names,
        tf,
        int(markets[names[0]].ts[history - 1]),
        last_ids,
        time.monotonic() + args.timeout_s,
    )
    redis_cpu_before = redis_cpu_s(client)
    worker_before = [metric_sum_count(d, "quantum_inference_worker_cpu_seconds") for d in daemons]
    arrival: list[float] = []
    stored: list[float] = []
    queued: list[float] = []
    missing = 0
    for r in range(args.rounds):
        k = history + r
        bars = [(KEYS.bars(s, tf), frame(markets[s], k, k + 1)) for s in names]
        publish(client, bars)
        published = time.perf_counter()
        seen = read_signals(
            client,
            names,
            tf,
            int(markets[names[0]].ts[k]),
            last_ids,
            time.monotonic() + args.timeout_s,
        )
        if r >= args.warmup:
            arrival += [(at - published) * 1000.0 for at, _ in seen.values()]
            stored += [latency for _, latency in seen.values()]
            missing += len(names) - len(seen)
        queued.append(sum(d.metric("quantum_training_jobs_queued") for d in daemons))
        time.sleep(args.gap_s)
    round_bars = args.rounds * spec.series
    worker_after = [metric_sum_count(d, "quantum_inference_worker_cpu_seconds") for d in daemons]
    worker_cpu = sum(a[0] - b[0] for a, b in zip(worker_after, worker_before, strict=True))
    worker_requests = sum(a[1] - b[1] for a, b in zip(worker_after, worker_before, strict=True))
    return {
        "series": spec.series,
        "tf": tf,
        "daemons": spec.daemons,
        "batch_bars": spec.batch_bars,
        "history_bars": total,
        "ingest_s": ingest_s,
        "ingest_bars_per_s": total / ingest_s,
        "first_signals": len(first),
        "arrival_to_signal_ms": quantiles(arrival),
        "stored_to_signal_ms": quantiles(stored),
        "signals_missing": missing,
        "queue_max": max(queued),
        "queue_last": queued[-1],
        "daemon_rss_mb": sum(rss_mb(d.proc.pid) for d in daemons),
        "worker_rss_mb": sum(rss_mb(d.worker_pid()) for d in daemons),
        "redis_used_mb": float(client.info("memory")["used_memory"]) / 2**20,
        "redis_cpu_us_per_round_bar": (redis_cpu_s(client) - redis_cpu_before) * 1e6 / round_bars,
        "worker_cpu_ms_per_request": worker_cpu * 1000.0 / max(worker_requests, 1.0),
        "load_average_1m": os.getloadavg()[0],
    }


def streams_drained(client: redis.Redis, streams: list[str]) -> bool:
    """Every entry of ``streams`` delivered to the consumer group and
    acknowledged (ingest acknowledges a batch once its bars are committed)."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xinfo_groups(stream)
    for groups in pipe.execute(raise_on_error=False):
        if isinstance(groups, Exception) or not groups:
            return False
        if any(g["lag"] != 0 or g["pending"] != 0 for g in groups):
            return False
    return True


def redis_cpu_s(client: redis.Redis) -> float:
    """CPU seconds redis-server used so far (the bench's own reads included)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def metric_sum_count(daemon: Daemon, histogram: str) -> tuple[float, float]:
    return daemon.metric(f"{histogram}_sum"), daemon.metric(f"{histogram}_count")


def quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(values)
    return {
        "n": len(a),
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


# -- report ----------------------------------------------------------------------------------


def per_series_memory(results: list[dict[str, Any]]) -> None:
    """RSS and Redis memory per series: slope against the smallest run of the
    same timeframe, daemon count and batching."""
    for r in results:
        group = [
            o
            for o in results
            if (o["tf"], o["daemons"], o["batch_bars"]) == (r["tf"], r["daemons"], r["batch_bars"])
        ]
        base = min(group, key=lambda o: o["series"])
        extra = r["series"] - base["series"]
        for key in ("daemon_rss_mb", "worker_rss_mb", "redis_used_mb"):
            per = (r[key] - base[key]) * 1024.0 / extra if extra else float("nan")
            r[key.replace("_mb", "_kb_per_series")] = per


def print_table(results: list[dict[str, Any]]) -> None:
    head = (
        "series",
        "tf",
        "d",
        "batch",
        "ingest bars/s",
        "arrival p50/p99 ms",
        "stored p50/p99 ms",
        "miss",
        "queue max",
        "daemon RSS MB (KB/series)",
        "worker RSS MB (KB/series)",
        "redis MB (KB/series)",
        "worker CPU ms/request",
        "redis CPU us/bar",
        "load",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        a, s = r["arrival_to_signal_ms"], r["stored_to_signal_ms"]
        cells = (
            r["series"],
            r["tf"],
            r["daemons"],
            r["batch_bars"],
            f"{r['ingest_bars_per_s']:,.0f}",
            f"{a['p50']:.1f} / {a['p99']:.1f}",
            f"{s['p50']:.1f} / {s['p99']:.1f}",
            r["signals_missing"],
            f"{r['queue_max']:.0f}",
            f"{r['daemon_rss_mb']:.0f} ({r['daemon_rss_kb_per_series']:.1f})",
            f"{r['worker_rss_mb']:.0f} ({r['worker_rss_kb_per_series']:.1f})",
            f"{r['redis_used_mb']:.1f} ({r['redis_used_kb_per_series']:.1f})",
            f"{r['worker_cpu_ms_per_request']:.2f}",
            f"{r['redis_cpu_us_per_round_bar']:.0f}",
            f"{r['load_average_1m']:.1f}",
        )
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def main() -> int:
    args = parse_args()
    counts = [int(n) for n in args.series.split(",")]
    tfs = args.tf.split(",")
    cost = feature_cost()
    print(
        f"per-bar features, 513-bar window (medians): numpy newest row "
        f"{cost['numpy_newest_row_ms']:.3f} ms, numpy all rows {cost['numpy_all_rows_ms']:.3f} "
        f"ms, pandas rolling (before) {cost['pandas_ms']:.3f} ms: "
        f"{cost['ratio_pandas_to_numpy_newest']:.2f}x",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    batchings = [args.batch_bars, 1] if args.baseline else [args.batch_bars]
    with tempfile.TemporaryDirectory(prefix="qd-scale-models-") as models:
        for tf in tfs:
            template = train_template(tf, Path(models))
            for n in counts:
                for batch_bars in batchings:
                    spec = RunSpec(n, tf, batch_bars, args.daemons)
                    print(f"run: {spec}", flush=True)
                    result = run_one(spec, template, args)
                    a = result["arrival_to_signal_ms"]
                    print(
                        f"  ingest {result['ingest_bars_per_s']:,.0f} bars/s, arrival to "
                        f"signal p50 {a['p50']:.1f} / p99 {a['p99']:.1f} ms",
                        flush=True,
                    )
                    results.append(result)
    per_series_memory(results)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"feature_cost": cost, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
