"""The demo: a private Redis, the daemon as a subprocess, the bundled bars'
history published at once and their held-out tail one bar per series every
--pace seconds, and a live summary of what the daemon does with them (models
trained and judged, signals, trust, shadow verdicts, lifecycle events) until
Ctrl-C or --seconds; then the counts of the whole run."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from quantum_daemon.domain.config import Config, load
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference.context import configured_series
from quantum_daemon_dev.demo.feed import (
    SeriesBars,
    TailFeed,
    bar_files,
    publish_history,
    split_series,
)
from quantum_daemon_dev.demo.report import (
    Snapshot,
    banner,
    final_summary,
    header,
    live_summary,
)
from quantum_daemon_dev.demo.settings import demo_settings
from quantum_daemon_dev.demo.tally import Tally, Watcher
from quantum_daemon_dev.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "quantum_daemon" / "data"
DEFAULT_DATA_DIR = REPO / "data" / "demo"
MARKER = ".quantum-demo"  # a data dir the demo made, and may wipe at its next start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: Ctrl-C)")
    parser.add_argument("--pace", type=float, default=1.0, help="seconds between live bars")
    parser.add_argument("--tail", type=int, default=600, help="bars per series held out as live")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between summaries")
    parser.add_argument(
        "--warmup",
        type=float,
        default=180.0,
        help="wait at most this long for each model's first training before the live bars",
    )
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="wiped at start")
    parser.add_argument("--config", default=str(REPO / "scripts" / "demo.toml"))
    args = parser.parse_args()
    for name in ("seconds", "tail", "warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    for name in ("pace", "every"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be > 0")
    return args


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does: the daemon and Redis run
    in their own sessions, so the demo must stop them itself."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def fresh_data_dir(path: Path) -> None:
    """The demo starts from nothing: bars already stored would make the live
    bars duplicates. Only a folder the demo made (or its default) is wiped."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists() and path != DEFAULT_DATA_DIR:
            raise SystemExit(f"demo: {path} is not empty and not the demo's: choose another")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by scripts/demo.py; wiped at its next start\n")


def start_daemon(config: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    # Its own session: Ctrl-C reaches the demo only, which then stops the
    # daemon (SIGTERM) and Redis in order, after reading what they published.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "quantum_daemon", "--config", config, "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if get_json(f"{base}/readyz")[0] == 200:
            return
        time.sleep(0.2)
    raise SystemExit(f"demo: the daemon did not become ready (exit code {proc.poll()})")


def snapshot(base: str) -> Snapshot:
    code, status = get_json(f"{base}/api/status")
    models_code, models = get_json(f"{base}/api/models")
    return Snapshot(
        status if code == 200 else {},
        (models or {}).get("models", []) if models_code == 200 else [],
    )


class Demo:
    """The live part: paces the tail, reads back what the daemon published,
    prints the summary every ``--every`` seconds."""

    def __init__(
        self,
        args: argparse.Namespace,
        cfg: Config,
        client: redis.Redis,
        series: list[SeriesBars],
        base: str,
        proc: subprocess.Popen[bytes],
        top: str,
    ) -> None:
        self.args, self.cfg, self.base, self.proc, self.top = args, cfg, base, proc, top
        keys = Keys(cfg.redis.prefix)
        names = [f"{s}:{t}" for s, t in configured_series(cfg)]
        self.watcher = Watcher(client, keys, names, cfg.models.families)
        self.feed = TailFeed(client, keys, series)
        self.n_models = (
            len(cfg.models.families) * len(cfg.models.symbols) * len(cfg.models.timeframes)
        )
        self.next_print = 0.0

    @property
    def tally(self) -> Tally:
        return self.watcher.tally

    def elapsed(self) -> float:
        return time.monotonic() - self.tally.started

    def over(self) -> bool:
        timed_out = bool(self.args.seconds) and self.elapsed() >= self.args.seconds
        return timed_out or self.proc.poll() is not None

    def warm_up(self) -> None:
        """Until each model's first job is done: the history's training and verdicts."""
        print(f"==> training every model on the history first (at most {self.args.warmup:.0f} s)")
        deadline = time.monotonic() + self.args.warmup
        while not self.over() and time.monotonic() < deadline:
            if len(self.tally.trained_models) >= self.n_models:
                return
            self.tick(f"warm-up: {len(self.tally.trained_models)}/{self.n_models} models trained")

    def run_live(self) -> None:
        steps, pace = self.feed.steps, self.args.pace
        print(f"==> live: one bar per series every {pace:g} s ({steps} held-out bars each)")
        next_bar = time.monotonic()
        while not self.over():
            if not self.feed.done and time.monotonic() >= next_bar:
                self.feed.publish_next()
                next_bar += pace
            done = " (tail done)" if self.feed.done else ""
            self.tick(f"live bar {self.feed.step}/{steps} per series{done}")

    def tick(self, feed_text: str) -> None:
        with contextlib.suppress(redis.RedisError):
            self.watcher.poll()
        if time.monotonic() >= self.next_print:
            summary = live_summary(
                self.tally, snapshot(self.base), feed_text, self.cfg.promotion.shadow_min_bars
            )
            # On a terminal the screen is redrawn in place, under the banner;
            # in a log, each summary is appended.
            if sys.stdout.isatty():
                summary = f"\033[H\033[J{self.top}\n{summary}"
            print(summary, flush=True)
            self.next_print = time.monotonic() + self.args.every
        time.sleep(min(0.2, self.args.pace / 2))


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        print("==> the daemon did not stop within 60 s of SIGTERM: killed")
        proc.kill()
        return proc.wait()


def main() -> int:
    args = parse_args()
    stop_on_signals()
    args.config = str(Path(args.config).resolve())
    data_dir = Path(args.data_dir).resolve()
    fresh_data_dir(data_dir)
    env = dict(os.environ, QUANTUM_DATA_DIR=str(data_dir))
    env.setdefault("QUANTUM_API_PORT", str(free_port()))
    server = None
    if not env.get("QUANTUM_REDIS_URL"):
        server = RedisServer(new_session=True).start()
        env["QUANTUM_REDIS_URL"] = server.url
    try:
        return run(args, env, data_dir)
    except KeyboardInterrupt:
        print("\n==> Ctrl-C before the daemon started: stopping")
        return 130
    finally:
        if server is not None:
            server.cleanup()
            print("==> private redis-server stopped", flush=True)


def run(args: argparse.Namespace, env: dict[str, str], data_dir: Path) -> int:
    """Publish the history, start the daemon, run the demo, stop the daemon."""
    cfg, reference = load(args.config, env), load(REPO / "config.toml", env)
    base = f"http://{cfg.api.host}:{cfg.api.port}"
    log_path = data_dir / "daemon.log"
    settings = demo_settings(cfg, reference)
    print(banner(base, settings, args.config, str(log_path)), flush=True)
    print(f"==> redis at {env['QUANTUM_REDIS_URL']}")
    top = header(base, settings, shutil.get_terminal_size().columns)
    client = redis.Redis.from_url(env["QUANTUM_REDIS_URL"])
    series = split_series(bar_files(SAMPLE_DIR), args.tail)
    published = publish_history(client, Keys(cfg.redis.prefix), series)
    print(f"==> history: {published:,} bars published at once ({_history_text(series)})")
    proc = start_daemon(args.config, env, log_path)
    demo: Demo | None = None
    try:
        wait_ready(base, proc)
        print(f"==> daemon ready (pid {proc.pid}): dashboard {base}/dashboard", flush=True)
        demo = Demo(args, cfg, client, series, base, proc, top)
        demo.warm_up()
        demo.run_live()
    except KeyboardInterrupt as exc:
        print(f"\n==> {exc or 'Ctrl-C'}: stopping")
    finally:
        if demo is not None:
            with contextlib.suppress(redis.RedisError):
                demo.watcher.poll()
        print("==> stopping the daemon (SIGTERM)", flush=True)
        code = stop_daemon(proc)
        print(f"==> daemon exited with code {code}")
        client.close()
    if demo is not None:
        print(final_summary(demo.tally, demo.elapsed(), demo.feed.step))
    print(f"dashboard was {base}/dashboard; daemon log: {log_path}", flush=True)
    return 0 if code == 0 else 1


def _history_text(series: list[SeriesBars]) -> str:
    return ", ".join(f"{s.name} {len(s.history)} + {len(s.tail)} live" for s in series)


if __name__ == "__main__":
    sys.exit(main())
