"""Does a dead webhook receiver slow the daemon down?

Runs the real daemon (``python -m quantum_daemon run``) against a private
redis-server twice in one run of this script: without webhooks, and with
``[webhooks]`` pointing at a receiver that accepts connections and never
answers (every delivery waits out its ``timeout_s`` on each of its
attempts, ``max_in_flight`` of them at once, the rest of the events
waiting in the URL's consumer group). Each time a publisher adds
``--bar-rate`` bars per second (a 1m series that no model trains on: each
bar is stored and gets its flat signal from the inference worker) and
``--event-rate`` lifecycle events per second on ``quantum:events``, for
``--seconds`` after a warm-up.

Printed per mode: the daemon's event-loop lag p99 (its
``quantum_event_loop_lag_p99_seconds`` gauge, the p99 of its last 3000
samples, 50 ms apart, read every second) as the median over the run, and
the median of the p50 gauge; the p99 of the samples of the measured period
alone, from the lag histogram (the upper bound of its bucket); bars stored
and signals published; and for the webhooks, the deliveries in flight, the
entries pending and those not read yet at the end.

    .venv/bin/python scripts/bench_webhooks.py [--seconds 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantum_daemon.domain.events import make_event  # noqa: E402
from quantum_daemon.domain.keys import Keys  # noqa: E402
from quantum_daemon.storage.events import publish_sync  # noqa: E402
from quantum_daemon_dev.redis_server import free_port, running_redis  # noqa: E402
from tests.daemon_proc import DaemonProcess, write_config  # noqa: E402

KEYS = Keys()
SYMBOL, TF, STEP_MS = "BENCHUSDT", "1m", 60_000
INGESTED = f'quantum_bars_ingested_total{{symbol="{SYMBOL}",tf="{TF}"}}'
START_MS = 1_704_067_200_000
BASE = f"""
[ingest]
symbols = ["{SYMBOL}"]
timeframes = ["{TF}"]
[models]
symbols = ["BTCUSDT"]
families = ["evo_model"]
"""
HOOKS = """
[webhooks]
enabled = true
urls = ["{url}"]
timeout_s = 5.0
retries = 5
max_in_flight = 8
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--bar-rate", type=float, default=20.0)
    parser.add_argument("--event-rate", type=float, default=10.0)
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


class SilentReceiver:
    """Accepts TCP connections on 127.0.0.1, reads, never answers."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def __enter__(self) -> SilentReceiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        assert self._stop is not None
        while not self._stop.is_set() and await reader.read(65536):
            pass
        writer.close()


def metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def lag_buckets(text: str) -> dict[float, float]:
    """The loop-lag histogram's cumulative bucket counts, by upper bound."""
    found = re.findall(
        r'^quantum_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([0-9.eE+-]+)$', text, re.M
    )
    return {float(le): float(count) for le, count in found}


def period_p99_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """p99 of the lag samples taken between two scrapes: the upper bound of
    the histogram bucket it falls in (the buckets are 1, 2, 5, 10, 20, 50 ms...)."""
    delta = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = delta[float("inf")]
    for le, count in delta.items():
        if count >= 0.99 * total:
            return le * 1000
    return float("inf")


def read_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def bar_fields(k: int) -> dict[str, str]:
    price = 100.0 + (k % 50) * 0.1
    return {"ts": str(START_MS + k * STEP_MS), "open": f"{price:.2f}",
            "high": f"{price + 0.5:.2f}", "low": f"{price - 0.5:.2f}",
            "close": f"{price + 0.1:.2f}", "volume": "10"}  # fmt: skip


def publish_steadily(
    client: redis.Redis, stop: threading.Event, bar_rate: float, event_rate: float
) -> dict[str, int]:
    """Bars and events at their rates until ``stop``; what was published."""
    counts = {"bars": 0, "events": 0}
    started = time.monotonic()
    while not stop.is_set():
        now = time.monotonic() - started
        while counts["bars"] < now * bar_rate:
            client.xadd(KEYS.bars(SYMBOL, TF), bar_fields(counts["bars"]))  # type: ignore[arg-type]
            counts["bars"] += 1
        while counts["events"] < now * event_rate:
            publish_sync(client, KEYS, bench_event(counts["events"]))
            counts["events"] += 1
        time.sleep(0.005)
    return counts


def bench_event(k: int) -> Any:
    return make_event("model.evaluated", model_id="xgb_BENCHUSDT_1m", family="xgb",
                      symbol=SYMBOL, tf=TF, version=f"v20240101_{k:06d}",
                      at=datetime.now(UTC), transition=f"bench-{k}")  # fmt: skip


def one_mode(
    name: str, redis_url: str, tmp: Path, args: argparse.Namespace, hook_url: str | None
) -> dict[str, Any]:
    redis.Redis.from_url(redis_url).flushall()
    port = free_port()
    extra = BASE + (HOOKS.format(url=hook_url) if hook_url else "")
    config = write_config(tmp / f"{name}.toml", redis_url, tmp / f"data-{name}", port, extra)
    daemon = DaemonProcess(config, env={"QUANTUM_WEBHOOK_SECRET": "bench-secret"}).start()
    client = redis.Redis.from_url(redis_url)
    try:
        daemon.wait_for("daemon.ready", timeout=120)
        stop = threading.Event()
        counts: dict[str, int] = {}
        publisher = threading.Thread(
            target=lambda: counts.update(
                publish_steadily(client, stop, args.bar_rate, args.event_rate)
            )
        )
        publisher.start()
        time.sleep(args.warmup)
        first = lag_buckets(read_metrics(port))
        p99s, p50s = [], []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            text = read_metrics(port)
            p99s.append(metric(text, "quantum_event_loop_lag_p99_seconds") or 0.0)
            p50s.append(metric(text, "quantum_event_loop_lag_p50_seconds") or 0.0)
            time.sleep(1.0)
        last = lag_buckets(read_metrics(port))
        stop.set()
        publisher.join()
        time.sleep(2.0)  # the last bars through ingest and inference
        text = read_metrics(port)
        result = summary(name, client, text, p99s, p50s, counts)
        result["loop_lag_p99_ms_of_the_period"] = period_p99_ms(first, last)
        daemon.send(signal.SIGTERM)
        result["exit_code"] = daemon.wait(timeout=60)
        return result
    finally:
        daemon.kill()
        client.close()


def summary(
    name: str,
    client: redis.Redis,
    text: str,
    p99s: list[float],
    p50s: list[float],
    counts: dict[str, int],
) -> dict[str, Any]:
    groups = client.xinfo_groups(KEYS.events) if client.exists(KEYS.events) else []
    hook_groups = [g for g in groups if b"webhooks" in g["name"]]
    return {
        "mode": name,
        "loop_lag_p99_ms_median": round(statistics.median(p99s) * 1000, 3),
        "loop_lag_p99_ms_max": round(max(p99s) * 1000, 3),
        "loop_lag_p50_ms_median": round(statistics.median(p50s) * 1000, 3),
        "samples": len(p99s),
        "bars_published": counts.get("bars", 0),
        "bars_stored": int(metric(text, INGESTED) or 0),
        "signals": client.xlen(KEYS.signals(SYMBOL, TF)),
        "events_published": counts.get("events", 0),
        "webhook_in_flight": metric(text, "quantum_webhook_in_flight"),
        "webhook_pending": sum(int(g["pending"]) for g in hook_groups),
        "webhook_unread": sum(int(g.get("lag") or 0) for g in hook_groups),
    }  # fmt: skip


def main() -> int:
    args = parse_args()
    results = []
    with running_redis() as server, tempfile.TemporaryDirectory(prefix="bench-hooks-") as tmp:
        results.append(one_mode("no webhooks", server.url, Path(tmp), args, None))
        with SilentReceiver() as receiver:
            url = f"http://127.0.0.1:{receiver.port}/hook"
            results.append(one_mode("dead receiver", server.url, Path(tmp), args, url))
            results[-1]["receiver_connections"] = receiver.connections
    for r in results:
        print(f"{r['mode']:>14}: loop lag p99 median {r['loop_lag_p99_ms_median']:.2f} ms "
              f"(max {r['loop_lag_p99_ms_max']:.2f}, p50 median {r['loop_lag_p50_ms_median']:.2f}"
              f", period p99 <= {r['loop_lag_p99_ms_of_the_period']:g} ms)"
              f", bars {r['bars_stored']}/{r['bars_published']} stored, {r['signals']} signals, "
              f"events {r['events_published']}, webhook in flight {r['webhook_in_flight']}, "
              f"pending {r['webhook_pending']}, unread {r['webhook_unread']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
