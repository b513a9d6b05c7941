"""End to end through the running daemon: the real BTC/USDT 1h bars of
``../shared/data/market`` (or the bundled copy of their end) replayed onto
Redis train and promote a version of each of the six families, then every
further closed bar gets exactly one
signal (all six families in it, the position sized by ``rl_sizer``), every
family gets a trust weight, ``/api/trust`` and ``/api/signals`` serve them,
and a restart publishes no signal twice. Marked slow; skipped only without
the market data."""

from __future__ import annotations

import json
import math
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.replay import publish_frame
from quantum_daemon.storage.bar_files import read_bar_file
from quantum_daemon.storage.events import parse_entry
from tests.daemon_proc import DaemonProcess, api_port, write_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "market" / "BTC_USDT-1h.feather"
BUNDLED = REPO / "quantum_daemon" / "data" / "BTC_USDT-1h.feather"  # its last 2,500 bars
MARKET = SHARED if SHARED.is_file() else BUNDLED
FAMILIES = ("xgb", "lgbm", "nhits", "patchtst", "evo_model", "rl_sizer")
SYMBOL, TF = "BTCUSDT", "1h"
HISTORY, LIVE = 2200, 60
KEYS = Keys()
ZOO = f"""
[ingest]
symbols = ["{SYMBOL}"]
timeframes = ["{TF}"]
[models]
families = {json.dumps(list(FAMILIES))}
symbols = ["{SYMBOL}"]
timeframes = ["{TF}"]
[training]
workers = 2
history_bars = 2105
[evaluation]
n_test_windows = 1
[promotion]
min_trades = 0
min_dsr = 0.0
beat_baselines = false
max_ece = 1.0
dm_alpha = 1.0
min_profit_factor = 0.0
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(not MARKET.is_file(), reason=f"no market data at {MARKET}"),
]


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s}s")


def promoted(client: redis.Redis) -> set[str]:
    events = [parse_entry(f) for _, f in client.xrange(KEYS.events)]
    return {e.data["family"] for e in events if e.type == "model.promoted"}


def signal_ts(client: redis.Redis, status: str = "live") -> list[int]:
    signals = [parse_signal(f) for _, f in client.xrange(KEYS.signals(SYMBOL, TF))]
    return [s.ts for s in signals if s.status == status]


def test_replayed_real_bars_give_six_live_families_and_one_signal_per_bar(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    frame = read_bar_file(MARKET).frame
    history, live = frame.iloc[:HISTORY], frame.iloc[HISTORY : HISTORY + LIVE]
    port = api_port()
    config = write_config(tmp_path / "config.toml", redis_url, tmp_path / "data", port, ZOO)
    stream = KEYS.bars(SYMBOL, TF)
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready", timeout=60)
        publish_frame(redis_client, stream, history)
        wait_for(lambda: promoted(redis_client) >= set(FAMILIES), 1000, "six promotions")
        wait_for(lambda: set(get_json(port, "/api/trust")["live_families"]) == set(FAMILIES),
                 60, "six live families")  # fmt: skip
        assert signal_ts(redis_client) == []  # no bar closed since the models went live
        # before, a bar answered while some model was not yet active was flat (#13)
        flat = signal_ts(redis_client, "flat")
        assert all(ts < int(live["ts"].iloc[0]) for ts in flat)
        publish_frame(redis_client, stream, live.iloc[:40])  # a backlog: one batch
        for k in range(40, LIVE):  # then bar by bar
            publish_frame(redis_client, stream, live.iloc[k : k + 1])
            time.sleep(0.05)
        expected = [int(t) for t in live["ts"]]
        wait_for(lambda: signal_ts(redis_client) == expected, 120, "one signal per bar")
        trust = get_json(port, "/api/trust")
        signals = get_json(port, f"/api/signals?n=5&symbol={SYMBOL}")
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()

    last = parse_signal(redis_client.xrevrange(KEYS.signals(SYMBOL, TF), count=1)[0][1])
    assert set(last.versions) == set(FAMILIES)
    assert last.position_source == "rl_sizer"
    weights = {f: float(redis_client.get(KEYS.trust(f))) for f in FAMILIES}
    assert all(w > 0 for w in weights.values())
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-9)
    assert set(redis_client.hkeys(KEYS.trust_history)) == set(FAMILIES)
    # positions are scored one bar later, forecasts after the 24-bar horizon
    assert all(redis_client.xlen(KEYS.trust_events(f)) > 0 for f in FAMILIES)
    assert trust["weights"] == pytest.approx(weights)
    recent = signals["signals"][f"{SYMBOL}:{TF}"]["recent"]
    assert [s["ts"] for s in recent] == expected[::-1][:5]

    again = DaemonProcess(config).start()
    try:
        again.wait_for("inference.started", timeout=60)
        again.wait_for("inference.models_loaded", timeout=120)
        time.sleep(2)
        again.send(signal.SIGTERM)
        assert again.wait(timeout=60) == 0
    finally:
        again.kill()
    assert signal_ts(redis_client) == expected  # nothing published twice after a restart
