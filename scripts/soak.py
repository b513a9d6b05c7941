#!/usr/bin/env python
"""Soak: does a real daemon stay bounded while bars, trainings and inference
run for a long time (issue #16)?

Starts a private redis-server (``quantum_daemon_dev.redis_server``) and a real
``python -m quantum_daemon --config C run`` on a temporary data dir, with a
zoo cheap enough for two cores (``--families``, default xgb and lgbm, on
``--symbols``, 1m bars, ``history_bars`` 1,000 and ``retrain_every_bars`` 500:
the models retrain again and again, and the inference worker answers every
bar). A publisher thread XADDs synthetic 1m random walks (strictly
increasing, on-grid ``ts`` ending before the wall clock) in bursts at
``--rate`` bars/s over all bar streams, capped at ``MAXLEN ~`` the config's
``ingest.stream_maxlen``, for ``--minutes``.

Every ``--sample-s`` seconds it samples and prints one line: RSS of the
daemon and the sum over its child processes (training and inference
workers), their open file descriptors, stream lengths (bars, signals, DLQ,
events), Redis memory, the store on disk (bars.sqlite3 with WAL,
predictions.sqlite3, the models folder), versions trained, signals
published, /readyz. At the end a table gives each series at start (the
first sample after ``--warmup-s``: start-up allocation excluded), at end, and
its least-squares slope per hour. The verdict fails (exit 1) when the RSS
slope of the daemon or of its workers exceeds ``--max-rss-mb-per-h``, the fd
slope of either exceeds ``--max-fds-per-h``, the daemon died, /readyz was
not 200 at the end, or SIGTERM did not stop it with exit 0 within its grace.
The bar store grows by design (the durable history): its slope is shown,
not judged. Warnings and errors of the daemon's log are summarized.

    .venv/bin/python scripts/soak.py [--minutes 30] [--sample-s 10] [--warmup-s 60]
        [--rate 300] [--symbols BTCUSDT ETHUSDT] [--families xgb lgbm]
        [--out samples.csv|samples.json] [--log daemon.log]

Two cores: expect both busy (training workers run at nice +10). A run under
a few minutes is a smoke test of the script; slopes mean something after
tens of minutes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
from prometheus_client.parser import text_string_to_metric_families

from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.replay import publish_frame
from quantum_daemon_dev.redis_server import free_port, running_redis

KEYS = Keys()
TF, MINUTE = "1m", 60_000
GRACE_S = 20.0
STREAM_MAXLEN = 100_000
STORE_FILES = ("bars.sqlite3", "bars.sqlite3-wal", "bars.sqlite3-shm")
RECORD_FILES = ("predictions.sqlite3", "predictions.sqlite3-wal", "predictions.sqlite3-shm")
LIFECYCLE_EVENTS = (
    "training.completed",
    "training.failed",
    "model.promoted",
    "model.in_shadow",
    "model.rejected",
    "model.retired",
    "inference.worker_started",
)
# (series, unit, judged against which limit: "rss", "fds" or "")
SERIES: tuple[tuple[str, str, str], ...] = (
    ("daemon_rss_mb", "MB", "rss"),
    ("workers_rss_mb", "MB", "rss"),
    ("workers", "", ""),
    ("daemon_fds", "", "fds"),
    ("workers_fds", "", "fds"),
    ("bars_published", "", ""),
    ("bars_ingested", "", ""),
    ("bars_xlen", "", ""),
    ("signals_xlen", "", ""),
    ("dlq_xlen", "", ""),
    ("events_xlen", "", ""),
    ("redis_mb", "MB", ""),
    ("store_mb", "MB", ""),
    ("records_mb", "MB", ""),
    ("models_mb", "MB", ""),
    ("versions_trained", "", ""),
    ("jobs_failed", "", ""),
    ("signals_published", "", ""),
    ("loop_lag_p99_ms", "ms", ""),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="publishing time")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="excluded from slopes")
    parser.add_argument("--rate", type=float, default=300.0, help="bars/s over all streams")
    parser.add_argument("--burst-s", type=float, default=0.5, help="one burst every this long")
    parser.add_argument("--symbols", nargs="+", default=["BTCUSDT", "ETHUSDT"])
    parser.add_argument("--families", nargs="+", default=["xgb", "lgbm"])
    parser.add_argument("--workers", type=int, default=2, help="[training] workers")
    parser.add_argument("--max-rss-mb-per-h", type=float, default=50.0)
    parser.add_argument("--max-fds-per-h", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="write the samples (.csv, else JSON)")
    parser.add_argument("--log", type=Path, help="write the daemon's log lines here")
    return parser.parse_args(argv)


def soak_config(redis_url: str, data_dir: Path, port: int, args: argparse.Namespace) -> str:
    """The daemon's TOML: 1m bars, small training windows, retrains all the time."""
    symbols, families = json.dumps(args.symbols), json.dumps(args.families)
    return f"""
[redis]
url = "{redis_url}"
[storage]
data_dir = "{data_dir}"
[api]
port = {port}
[logging]
level = "info"
format = "json"
[daemon]
heartbeat_interval_s = 1.0
grace_s = {GRACE_S}
[ingest]
symbols = {symbols}
timeframes = ["{TF}"]
stream_maxlen = {STREAM_MAXLEN}
[evaluation]
n_test_windows = 1
[training]
workers = {args.workers}
gpu = "off"
history_bars = 1000
job_timeout_s = 300.0
[models]
families = {families}
symbols = {symbols}
timeframes = ["{TF}"]
retrain_every_bars = 500
[promotion]
min_trades = 0
min_dsr = 0.0
beat_baselines = false
max_ece = 1.0
dm_alpha = 1.0
min_profit_factor = 0.0
shadow_min_bars = 48
shadow_max_bars = 240
[inference]
retention_days = 1
"""


@dataclass
class DaemonLog:
    """The daemon's stdout, read by a thread: counts by level, the last
    lines, warning and error events by name, optionally a copy on disk."""

    copy: Any = None
    levels: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: collections.Counter[str] = field(default_factory=collections.Counter)
    events: collections.Counter[str] = field(default_factory=collections.Counter)
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    ready: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def follow(self, stream: Any) -> None:
        self.thread = threading.Thread(target=self.read, args=(stream,), daemon=True)
        self.thread.start()

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=5)

    def read(self, stream: Any) -> None:
        for line in stream:
            self.tail.append(line)
            if self.copy is not None:
                self.copy.write(line)
            with contextlib.suppress(ValueError, AttributeError):
                self._count(json.loads(line))

    def _count(self, item: dict[str, Any]) -> None:
        level = str(item.get("level", "?"))
        self.levels[level] += 1
        self.events[str(item.get("event"))] += 1
        if level in ("warning", "error", "critical"):
            self.problems[f"{level} {item.get('event')}"] += 1
        if item.get("event") == "daemon.ready":
            self.ready.set()


def start_daemon(config: Path, log: DaemonLog) -> subprocess.Popen[str]:
    """The daemon in its own session: a Ctrl-C on the terminal reaches only
    this script, which stops the daemon itself."""
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantum_daemon", "--config", str(config), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    log.follow(proc.stdout)
    return proc


@dataclass(frozen=True)
class Stopped:
    code: int | None  # None: still running after the grace, killed
    seconds: float
    leftovers: int  # processes of its group still there after it exited


def stop_daemon(proc: subprocess.Popen[str], log: DaemonLog, grace_s: float) -> Stopped:
    """SIGTERM, wait ``grace_s``, then SIGKILL whatever is left of its
    process group (its own session: only the daemon and its children)."""
    started = time.monotonic()
    code: int | None = proc.poll()
    if code is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=grace_s)
    seconds = time.monotonic() - started
    left = group_members(proc.pid)
    for _ in range(50):  # children may take a moment to see their parent gone
        if code is None or not (left := group_members(proc.pid)):
            break
        time.sleep(0.1)
    if left:
        print(f"left behind by the daemon: {describe(left)}", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.join()
    return Stopped(code, seconds, len(left))


def describe(pids: list[int]) -> str:
    """Each process as ``pid cmdline`` (shortened)."""
    names = []
    for pid in pids:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            names.append(f"{pid} {cmd.strip()[:100]}")
    return "; ".join(names)


class Publisher(threading.Thread):
    """XADDs 1m random-walk bars in bursts, round robin over the symbols,
    never past the wall clock."""

    def __init__(self, url: str, symbols: list[str], rate: float, burst_s: float, seconds: float):
        super().__init__(daemon=True, name="publisher")
        self.client = redis.Redis.from_url(url)
        self.symbols, self.rate, self.burst_s = symbols, rate, burst_s
        per_symbol = int(rate / len(symbols) * (seconds + 120) * 1.1) + 10_000
        now = int(time.time() * 1000) // MINUTE * MINUTE
        self.next_ts = dict.fromkeys(symbols, now - per_symbol * MINUTE)
        self.close = dict.fromkeys(symbols, 30_000.0)
        self.rng = np.random.default_rng(16)
        self.published = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _loop(self) -> None:
        per_burst = max(1, round(self.rate * self.burst_s / len(self.symbols)))
        tick = time.monotonic()
        while not self.stopping.is_set():
            for symbol in self.symbols:
                self.published += self._burst(symbol, per_burst)
            tick += self.burst_s
            self.stopping.wait(max(0.0, tick - time.monotonic()))

    def _burst(self, symbol: str, n: int) -> int:
        newest = int(time.time() * 1000) // MINUTE * MINUTE - MINUTE
        n = min(n, (newest - self.next_ts[symbol]) // MINUTE)
        if n <= 0:
            return 0
        frame = self._bars(symbol, n)
        publish_frame(self.client, KEYS.bars(symbol, TF), frame, maxlen=STREAM_MAXLEN)
        self.next_ts[symbol] += n * MINUTE
        return n

    def _bars(self, symbol: str, n: int) -> pd.DataFrame:
        steps = 0.001 * self.rng.standard_normal(n)
        close = np.round(self.close[symbol] * np.exp(np.cumsum(steps)), 2)
        open_ = np.concatenate([[self.close[symbol]], close[:-1]])
        wick = np.abs(self.rng.standard_normal((2, n))) * 5
        self.close[symbol] = float(close[-1])
        return pd.DataFrame(
            {
                "ts": self.next_ts[symbol] + np.arange(n, dtype=np.int64) * MINUTE,
                "open": open_,
                "high": np.round(np.maximum(open_, close) + wick[0], 2),
                "low": np.round(np.minimum(open_, close) - wick[1], 2),
                "close": close,
                "volume": np.round(self.rng.lognormal(2, 1, n), 5),
            }
        )


# --- sampling --------------------------------------------------------------


def proc_table() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process, from /proc/*/stat."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            yield int(stat.parent.name), int(fields[1]), int(fields[2])


def group_members(pgid: int) -> list[int]:
    return [pid for pid, _, group in proc_table() if group == pgid]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for child, parent, _ in proc_table():
        children[parent].append(child)
    found, todo = [], list(children[pid])
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children[child])
    return found


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    with contextlib.suppress(OSError):
        return len(os.listdir(f"/proc/{pid}/fd"))
    return 0


def process_stats(pid: int) -> dict[str, float]:
    """RSS and fds of the daemon, and summed over its child processes."""
    kids = descendants(pid)
    return {
        "daemon_rss_mb": rss_mb(pid),
        "workers_rss_mb": sum(rss_mb(k) for k in kids),
        "workers": len(kids),
        "daemon_fds": fds(pid),
        "workers_fds": sum(fds(k) for k in kids),
    }


def size_mb(paths: Iterator[Path]) -> float:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size if path.is_file() else 0
    return total / 2**20


def files_under(folder: Path) -> Iterator[Path]:
    # os.walk skips what vanishes while it walks (the registry's temp folders);
    # Path.rglob raises for it.
    for root, _, names in os.walk(folder):
        yield from (Path(root) / name for name in names)


def disk_stats(data_dir: Path) -> dict[str, float]:
    return {
        "store_mb": size_mb(data_dir / name for name in STORE_FILES),
        "records_mb": size_mb(data_dir / name for name in RECORD_FILES),
        "models_mb": size_mb(files_under(data_dir / "models")),
    }


def redis_stats(client: redis.Redis, symbols: list[str]) -> dict[str, float]:
    def xlen(streams: list[str]) -> int:
        return sum(int(client.xlen(s)) for s in streams)

    return {
        "bars_xlen": xlen([KEYS.bars(s, TF) for s in symbols]),
        "signals_xlen": xlen([KEYS.signals(s, TF) for s in symbols]),
        "dlq_xlen": xlen([KEYS.dlq]),
        "events_xlen": xlen([KEYS.events]),
        "redis_mb": int(client.info("memory")["used_memory"]) / 2**20,
    }


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def metric_sums(text: str) -> dict[str, float]:
    """Each Prometheus sample name summed over its labels."""
    sums: dict[str, float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] += sample.value
    return sums


def daemon_metrics(port: int) -> dict[str, float]:
    code, text = http_get(port, "/metrics")
    sums = metric_sums(text) if code == 200 else {}
    return {
        "bars_ingested": sums.get("quantum_bars_ingested_total", 0.0),
        "versions_trained": sums.get("quantum_training_jobs_done_total", 0.0),
        "jobs_failed": sums.get("quantum_training_jobs_failed_total", 0.0),
        "signals_published": sums.get("quantum_signals_total", 0.0),
        "loop_lag_p99_ms": 1000 * sums.get("quantum_event_loop_lag_p99_seconds", 0.0),
    }


@dataclass
class Soak:
    args: argparse.Namespace
    proc: subprocess.Popen[str]
    client: redis.Redis
    publisher: Publisher
    data_dir: Path
    port: int
    started: float = field(default_factory=time.monotonic)
    samples: list[dict[str, float]] = field(default_factory=list)

    def sample(self) -> dict[str, float]:
        ready, _ = http_get(self.port, "/readyz")
        row: dict[str, float] = {"t_s": round(time.monotonic() - self.started, 1)}
        row |= process_stats(self.proc.pid)
        row |= {"bars_published": self.publisher.published}
        row |= daemon_metrics(self.port)
        row |= redis_stats(self.client, self.args.symbols)
        row |= disk_stats(self.data_dir)
        row["readyz"] = ready
        self.samples.append(row)
        return row

    def run(self, seconds: float) -> None:
        """Sample every ``sample_s`` (and at the end) until ``seconds`` passed
        or the daemon died."""
        deadline, tick = self.started + seconds, self.started
        while self.proc.poll() is None:
            if self.publisher.error is not None:
                raise RuntimeError("publisher failed") from self.publisher.error
            print(progress_line(self.sample()), flush=True)
            if tick >= deadline:
                return
            tick = min(tick + self.args.sample_s, deadline)
            time.sleep(max(0.0, tick - time.monotonic()))


def progress_line(row: dict[str, float]) -> str:
    return (
        f"t={row['t_s']:>6.0f}s rss daemon {row['daemon_rss_mb']:6.1f} MB "
        f"workers({row['workers']:.0f}) {row['workers_rss_mb']:7.1f} MB | "
        f"fds {row['daemon_fds']:.0f}+{row['workers_fds']:.0f} | "
        f"bars {row['bars_published']:,.0f} pub {row['bars_ingested']:,.0f} stored | "
        f"versions {row['versions_trained']:.0f} (failed {row['jobs_failed']:.0f}) | "
        f"signals {row['signals_published']:,.0f} | store {row['store_mb']:.1f} MB "
        f"models {row['models_mb']:.1f} MB | readyz {row['readyz']:.0f}"
    )


# --- report ----------------------------------------------------------------


@dataclass(frozen=True)
class Trend:
    name: str
    unit: str
    start: float
    end: float
    per_h: float
    limit: float | None

    @property
    def failed(self) -> bool:
        return self.limit is not None and self.per_h > self.limit


def trends(samples: list[dict[str, float]], args: argparse.Namespace) -> list[Trend]:
    """Start, end and least-squares slope per hour after the warm-up."""
    kept = [s for s in samples if s["t_s"] >= args.warmup_s]
    if len(kept) < 2:
        return []
    hours = np.array([s["t_s"] for s in kept]) / 3600
    limits = {"rss": args.max_rss_mb_per_h, "fds": args.max_fds_per_h, "": None}
    found = []
    for name, unit, judged in SERIES:
        values = np.array([s[name] for s in kept], dtype=float)
        slope = float(np.polyfit(hours, values, 1)[0])
        found.append(Trend(name, unit, values[0], values[-1], slope, limits[judged]))
    return found


def print_table(found: list[Trend], samples: list[dict[str, float]], warmup_s: float) -> None:
    kept = [s for s in samples if s["t_s"] >= warmup_s]
    if not found:
        print(f"too few samples after the {warmup_s:.0f} s warm-up for slopes ({len(kept)})")
        return
    print(
        f"\n{len(kept)} samples from t={kept[0]['t_s']:.0f}s to t={kept[-1]['t_s']:.0f}s "
        f"(warm-up {warmup_s:.0f} s excluded)"
    )
    print(f"{'series':<20}{'start':>14}{'end':>14}{'slope/h':>14}  verdict")
    for t in found:
        verdict = "" if t.limit is None else ("FAIL" if t.failed else "ok")
        limit = "" if t.limit is None else f" (limit {t.limit:g}/h)"
        print(f"{t.name:<20}{t.start:>14,.1f}{t.end:>14,.1f}{t.per_h:>+14,.1f}  {verdict}{limit}")


def print_log_summary(log: DaemonLog) -> None:
    print("\ndaemon log lines by level: " + ", ".join(f"{k} {v}" for k, v in log.levels.items()))
    print("lifecycle: " + ", ".join(f"{e} {log.events[e]}" for e in LIFECYCLE_EVENTS))
    for name, count in log.problems.most_common(15):
        print(f"  {count:>6}  {name}")


def write_samples(path: Path, samples: list[dict[str, float]]) -> None:
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(samples[0]) if samples else ["t_s"])
            writer.writeheader()
            writer.writerows(samples)
    else:
        path.write_text(json.dumps(samples, indent=1))
    print(f"samples written to {path}")


# --- main ------------------------------------------------------------------


def wait_ready(proc: subprocess.Popen[str], log: DaemonLog, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not log.ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "".join(log.tail)
            raise RuntimeError(f"daemon not ready (exit {proc.poll()}):\n{tail}")


def interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def soak(args: argparse.Namespace, stack: contextlib.ExitStack, log: DaemonLog) -> list[str]:
    """Runs the whole soak; returns the failures (empty: passed)."""
    server = stack.enter_context(running_redis())
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qd-soak-")))
    port, data_dir = free_port(), tmp / "data"
    config = tmp / "config.toml"
    config.write_text(soak_config(server.url, data_dir, port, args))
    proc = start_daemon(config, log)
    stack.callback(stop_daemon, proc, log, GRACE_S + 10)  # a no-op once stopped below
    wait_ready(proc, log)
    print(f"daemon {proc.pid} ready; its children: {describe(descendants(proc.pid))}")
    seconds = args.minutes * 60
    publisher = Publisher(server.url, args.symbols, args.rate, args.burst_s, seconds)
    run = Soak(args, proc, redis.Redis.from_url(server.url), publisher, data_dir, port)
    publisher.start()
    stack.callback(publisher.join, 5.0)
    stack.callback(publisher.stopping.set)
    try:
        run.run(seconds)
    finally:
        found = trends(run.samples, args)
        print_table(found, run.samples, args.warmup_s)
        if args.out:
            write_samples(args.out, run.samples)
    publisher.stopping.set()
    return verdict(found, run.samples, proc, log, port)


def verdict(
    found: list[Trend],
    samples: list[dict[str, float]],
    proc: subprocess.Popen[str],
    log: DaemonLog,
    port: int,
) -> list[str]:
    failures = [f"{t.name} grows {t.per_h:+.1f} {t.unit or ''}/h" for t in found if t.failed]
    if not found:
        failures.append("too few samples after the warm-up")
    if proc.poll() is not None:
        return [*failures, f"the daemon died (exit {proc.returncode})"]
    ready, body = http_get(port, "/readyz")
    if ready != 200:
        failures.append(f"/readyz answered {ready} at the end: {body.strip()}")
    not_ready = sum(1 for s in samples if s["readyz"] != 200)
    print(f"\n/readyz: {ready} at the end, not 200 in {not_ready} of {len(samples)} samples")
    stopped = stop_daemon(proc, log, GRACE_S + 10)
    print(
        f"SIGTERM: exit {stopped.code} after {stopped.seconds:.1f} s (grace_s {GRACE_S:g}), "
        f"{stopped.leftovers} child processes left behind"
    )
    if stopped.code != 0:
        failures.append(f"SIGTERM: exit {stopped.code} after {stopped.seconds:.1f} s")
    if stopped.leftovers:
        failures.append(f"{stopped.leftovers} child processes outlived the daemon")
    return failures


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with it ignored
    with contextlib.ExitStack() as stack:
        copy = stack.enter_context(args.log.open("w")) if args.log else None
        log = DaemonLog(copy=copy)
        try:
            failures = soak(args, stack, log)
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        finally:
            print_log_summary(log)
    print("\nverdict: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
