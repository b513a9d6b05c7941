"""Drive the demo: private Redis, the daemon as a subprocess, the bundled bars
replayed onto the streams, and a live summary until Ctrl-C (or --seconds)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from quantum_daemon_dev.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "quantum_daemon" / "data"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: Ctrl-C)")
    parser.add_argument("--data-dir", default=str(REPO / "data" / "demo"))
    parser.add_argument("--config", default=str(REPO / "config.toml"))
    return parser.parse_args()


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 0, {"error": str(exc)}


def start_daemon(args: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_path = Path(args.data_dir) / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"==> starting the daemon (JSON log: {log_path})")
    return subprocess.Popen(
        [sys.executable, "-m", "quantum_daemon", "--config", args.config, "run"],
        env=env,
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if get_json(f"{base}/readyz")[0] == 200:
            return
        time.sleep(0.2)
    raise SystemExit(f"the daemon did not become ready (exit code {proc.poll()})")


def replay_sample(args: argparse.Namespace, env: dict[str, str]) -> None:
    files = sorted(p for p in SAMPLE_DIR.glob("*") if p.suffix in (".csv", ".feather", ".json"))
    if not files:
        print("==> no bundled bar files to replay yet")
        return
    print(f"==> replaying {', '.join(f.name for f in files)} onto the bar streams")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "quantum_daemon",
            "--config",
            args.config,
            "replay",
            *map(str, files),
        ],
        env=env,
        check=True,
    )


def summary_line(base: str) -> str:
    code, status = get_json(f"{base}/api/status")
    if code != 200:
        return f"api: {status}"
    parts = [f"ready={status['ready']}", f"redis={'up' if status['redis']['up'] else 'DOWN'}"]
    lifecycle = status.get("lifecycle", {}).get("summary")
    if lifecycle:
        parts.append(f"models: {lifecycle}")
    ingest = status.get("ingest", {}).get("totals")
    if ingest:
        parts.append(
            f"bars stored={ingest['inserted']:,} duplicates={ingest['duplicates']:,} "
            f"rejected={ingest['rejected']:,} gaps={ingest['gaps']}"
        )
    return f"[{time.strftime('%H:%M:%S')}] " + "  ".join(parts)


def event_line(fields: dict[bytes, bytes]) -> str:
    """One readable line per lifecycle event from quantum:events."""
    kind = fields[b"type"].decode()
    data = json.loads(fields[b"data"])
    who = f"{data.get('model_id', '')} {data.get('version', '')}".strip()
    metrics = data.get("metrics") or {}
    detail = ""
    if kind == "model.evaluated":
        detail = (
            f"sharpe={_num(metrics.get('sharpe'))} dsr={_num(metrics.get('dsr'))} "
            f"trades={metrics.get('trades')} pf={_num(metrics.get('profit_factor'))} "
            f"(buy&hold sharpe={_num(_buy_and_hold(metrics).get('sharpe'))})"
        )
    elif kind in ("model.promoted", "model.retired"):
        detail = f"{data.get('from', '')} -> {data.get('to', '')} ({data.get('reason', '')})"
    elif kind in ("model.rejected", "training.failed"):
        detail = str(data.get("gate") or data.get("reason") or "")
    elif kind == "training.completed":
        detail = f"in {_num(data.get('seconds'))}s"
    return f"    {kind:<20} {who:<42} {detail}"


def _buy_and_hold(metrics: dict[str, Any]) -> dict[str, Any]:
    return dict((metrics.get("baselines") or {}).get("buy_and_hold") or {})


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else str(value)


def print_new_events(client: Any, stream: str, last_id: bytes) -> bytes:
    for entry_id, fields in client.xrange(stream, min=b"(" + last_id, count=200):
        print(event_line(fields), flush=True)
        last_id = entry_id
    return last_id


def watch(
    args: argparse.Namespace, env: dict[str, str], base: str, proc: subprocess.Popen[bytes]
) -> None:
    """Print lifecycle events as they arrive, and the summary when it changes."""
    print("==> live summary and lifecycle events (Ctrl-C to stop)")
    client = redis.Redis.from_url(env["QUANTUM_REDIS_URL"])
    last_id, started, last_summary = b"0-0", time.monotonic(), ""
    while proc.poll() is None and (not args.seconds or time.monotonic() - started < args.seconds):
        summary = summary_line(base)
        if summary.split("] ", 1)[-1] != last_summary.split("] ", 1)[-1]:
            print(summary, flush=True)
            last_summary = summary
        with contextlib.suppress(redis.RedisError):
            last_id = print_new_events(client, "quantum:events", last_id)
        time.sleep(0.5)
    client.close()


def main() -> int:
    args = parse_args()
    server = None
    env = dict(os.environ)
    if not env.get("QUANTUM_REDIS_URL"):
        server = RedisServer().start()
        env["QUANTUM_REDIS_URL"] = server.url
        print(f"==> private redis-server at {server.url} (dir {server.directory})")
    env["QUANTUM_DATA_DIR"] = args.data_dir
    env.setdefault("QUANTUM_API_PORT", str(free_port()))
    base = f"http://127.0.0.1:{env['QUANTUM_API_PORT']}"
    proc = start_daemon(args, env)
    try:
        wait_ready(base, proc)
        print(f"==> daemon ready: {base}/api/status  {base}/metrics")
        with contextlib.suppress(subprocess.CalledProcessError):
            replay_sample(args, env)
        watch(args, env, base, proc)
    except KeyboardInterrupt:
        print("\n==> Ctrl-C: stopping")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        print(f"==> daemon exited with code {code}")
        if server is not None:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
