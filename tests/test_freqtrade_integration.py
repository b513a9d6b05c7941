"""The Freqtrade strategy of ``integrations/freqtrade`` trades what the daemon
publishes.

Backtests: a real ``quantum-daemon simulate`` on the bundled BTC/USDT 1h bars
writes ``signals.csv``; a real ``freqtrade backtesting`` (its own venv from
PyPI, ``quantum_daemon_dev.freqtrade_venv``; no quantum_daemon, no redis-py
in it) runs the strategy on the same bars, offline (Binance's markets answer
from 127.0.0.1, ``quantum_daemon_dev.exchange_markets``), and its exported
trades are exactly the ones the file's positions call for: a signal for the
bar that opened at ``ts`` enters or exits at the open of ``ts + 1h``, never
earlier. Skipped only when PyPI cannot be reached to build that venv.

Live: the daemon's inference service (real worker process, real Redis)
publishes signals, and the strategy's reader, imported without Freqtrade,
returns the position for the last closed candle and refuses what it must.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.domain.keys import Keys
from quantum_daemon_dev.exchange_markets import binance_markets_server, freqtrade_exchange
from quantum_daemon_dev.freqtrade_venv import (
    PypiUnreachable,
    ensure_redis_py,
    ensure_venv,
    freqtrade_bin,
)

REPO = Path(__file__).resolve().parents[1]
STRATEGY = REPO / "integrations" / "freqtrade" / "QuantumSignalStrategy.py"
LIVE_PROBE = Path(__file__).with_name("freqtrade_live_probe.py")
BARS = REPO / "quantum_daemon" / "data" / "BTC_USDT-1h.feather"  # 2024-05-25 .. 2024-09-06 03:00
HOUR_MS = 3_600_000
FROM = "2024-08-10"
STAKE = 1000.0
KEYS = Keys()

# a cheap loop that trades: lgbm alone, short windows, the judge's rules and
# the decay watch off (docs/judge.md), so versions go live within the span
SIMULATE_CONFIG = """
[training]
history_bars = 400
workers = 2
[models]
families = ["lgbm"]
symbols = ["BTCUSDT"]
retrain_every_bars = 120
[evaluation]
horizon = 4
n_test_windows = 2
[promotion]
min_trades = 0
min_profit_factor = 0.0
shadow_min_bars = 12
shadow_max_bars = 48
min_dsr = 0.0
min_record_bars = 24
beat_baselines = false
max_ece = 1.0
dm_alpha = 1.0
drift_delta = 0.0
max_age_bars = 0
kill_window = 0
"""


def load_strategy_module() -> ModuleType:
    """The strategy file as Freqtrade loads it: by path, not as a package."""
    spec = importlib.util.spec_from_file_location("QuantumSignalStrategy", STRATEGY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- backtesting through the real Freqtrade -------------------------------------------


@pytest.fixture(scope="module")
def freqtrade() -> Path:
    try:
        venv = ensure_venv()
    except PypiUnreachable as exc:
        pytest.skip(f"cannot build Freqtrade's venv: {exc}")
    return freqtrade_bin(venv)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``signals.csv`` of a real simulate run over the bundled bars."""
    tmp = tmp_path_factory.mktemp("simulate")
    config = tmp / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp / "data"}"\n{SIMULATE_CONFIG}')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantum_daemon",
            "--config",
            str(config),
            "simulate",
            "--data",
            str(BARS),
            "--from",
            FROM,
            "--out",
            str(tmp / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "out" / "signals.csv"


@dataclass(frozen=True)
class Trade:
    open_ms: int
    close_ms: int | None  # None: still open at the end (Freqtrade's force exit)
    position: float  # of the signal that opened it


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def expected_trades(
    rows: list[dict[str, str]], last_open_ms: int, threshold: float = 0.0
) -> list[Trade]:
    """The long trades the file's positions call for, long-only: the signal
    of bar ``ts`` acts at the open of ``ts + 1h``; a row that cannot be
    acted on (``None`` position) changes nothing."""
    trades: list[Trade] = []
    open_at: tuple[int, float] | None = None
    for row in rows:
        ts, position = int(row["ts"]), _position(row)
        act_ms = ts + HOUR_MS
        if position is None or act_ms > last_open_ms:
            continue
        if open_at is None and position > threshold:
            open_at = (act_ms, position)
        elif open_at is not None and position <= 0:
            trades.append(Trade(open_at[0], act_ms, open_at[1]))
            open_at = None
    if open_at is not None:
        trades.append(Trade(open_at[0], None, open_at[1]))
    return trades


def _position(row: dict[str, str]) -> float | None:
    try:
        value = float(row["position"])
    except ValueError:
        return None
    return value if math.isfinite(value) and row.get("refuse") != "yes" else None


def run_backtest(
    freqtrade: Path, tmp: Path, signals: Path, quantum: dict[str, Any], *extra: str
) -> tuple[list[dict[str, Any]], str]:
    """``freqtrade backtesting`` offline on the bundled bars; its exported
    trades and its log."""
    user_data = make_user_data(tmp)
    with binance_markets_server() as (api_url, requests):
        config = freqtrade_config(user_data, api_url, signals, quantum)
        done = run_freqtrade(
            freqtrade,
            user_data,
            config,
            "backtesting",
            *extra,
            "--timerange",
            FROM.replace("-", "") + "-",
            "--export",
            "trades",
        )
    assert requests == ["/api/v3/exchangeInfo"], requests
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    log = (user_data / "freqtrade.log").read_text()  # one line per record, unlike the console
    return exported_trades(user_data / "backtest_results"), log


def make_user_data(tmp: Path) -> Path:
    user_data = tmp / "user_data"
    (user_data / "data" / "binance").mkdir(parents=True)
    (user_data / "strategies").mkdir()
    shutil.copy(BARS, user_data / "data" / "binance" / BARS.name)  # Freqtrade's own format
    shutil.copy(STRATEGY, user_data / "strategies" / STRATEGY.name)
    return user_data


def freqtrade_config(user_data: Path, api_url: str, signals: Path, quantum: dict[str, Any]) -> Path:
    config = {
        "max_open_trades": 1,
        "stake_currency": "USDT",
        "stake_amount": STAKE,
        "dry_run": True,
        "dry_run_wallet": 10 * STAKE,
        "timeframe": "1h",
        "trading_mode": "spot",
        "exchange": freqtrade_exchange(api_url, ["BTC/USDT"]),
        "pairlists": [{"method": "StaticPairList"}],
        "entry_pricing": {"price_side": "same"},
        "exit_pricing": {"price_side": "same"},
        "datadir": str(user_data / "data" / "binance"),
        "quantum": {"signals_file": str(signals), **quantum},
    }
    path = user_data / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def run_freqtrade(
    freqtrade: Path, user_data: Path, config: Path, command: str, *args: str
) -> subprocess.CompletedProcess[str]:
    # Freqtrade's venv as a user has it: nothing of this checkout importable; and
    # no PYTEST_* variable, under which Freqtrade leaves its logging unconfigured
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PYTEST_")
    }
    return subprocess.run(
        [
            str(freqtrade),
            command,
            "--config",
            str(config),
            "--userdir",
            str(user_data),
            "--strategy",
            "QuantumSignalStrategy",
            "--fee",
            "0.001",
            "--logfile",
            str(user_data / "freqtrade.log"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


def exported_trades(results: Path) -> list[dict[str, Any]]:
    latest = json.loads((results / ".last_result.json").read_text())["latest_backtest"]
    with zipfile.ZipFile(results / latest) as archive:
        document = json.loads(archive.read(latest.removesuffix(".zip") + ".json"))
    return list(document["strategy"]["QuantumSignalStrategy"]["trades"])


def as_trades(exported: list[dict[str, Any]]) -> list[Trade]:
    return [
        Trade(
            int(t["open_timestamp"]),
            None if t["exit_reason"] == "force_exit" else int(t["close_timestamp"]),
            t["stake_amount"] / STAKE,
        )
        for t in exported
    ]


def last_bar_open_ms() -> int:
    import pandas as pd

    return int(pd.read_feather(BARS)["date"].iloc[-1].value // 1_000_000)


def test_a_backtest_trades_exactly_what_simulate_published(
    freqtrade: Path, simulated: Path, tmp_path: Path
) -> None:
    """Every entry and exit at the open of the bar after its signal, as the
    positions say; the whole stake where |position| is 1."""
    rows = [r for r in read_rows(simulated) if r["symbol"] == "BTCUSDT"]
    expected = expected_trades(rows, last_bar_open_ms())
    assert len(expected) >= 5, "the simulated loop should go long several times"
    exported, log = run_backtest(freqtrade, tmp_path, simulated, {})
    got = as_trades(exported)
    assert [(t.open_ms, t.close_ms) for t in got] == [(t.open_ms, t.close_ms) for t in expected]
    by_ts = {int(r["ts"]): float(r["position"]) for r in rows}
    for trade in exported:
        # no look-ahead: the signal acted on is the one of the bar before the entry
        assert by_ts[trade["open_timestamp"] - HOUR_MS] > 0
        assert trade["enter_tag"] == "quantum" and not trade["is_short"]
    assert all(abs(t.position - 1.0) < 1e-3 for t in got)  # plain rule: |position| is 1
    assert "refused" not in log


def test_a_backtest_refuses_bad_rows_and_scales_the_stake(
    freqtrade: Path, simulated: Path, tmp_path: Path
) -> None:
    """Rows in simulate's format with fractional positions (an active sizer's),
    some broken or from a model off the allow-list: the broken ones are not
    traded on (one log line per kind), and each stake is |position| of the
    full one."""
    rows = [r for r in read_rows(simulated) if r["symbol"] == "BTCUSDT"]
    entries = [
        i
        for i, r in enumerate(rows)
        if float(r["position"]) > 0 and (i == 0 or float(rows[i - 1]["position"]) <= 0)
    ]
    assert len(entries) >= 4
    for k, r in enumerate(rows):
        if r["status"] == "live" and float(r["position"]) != 0:
            r["position"] = repr(float(r["position"]) * (0.3 + 0.7 * ((k * 7) % 10) / 10))
    rows[entries[0]]["position"] = "nan"
    rows[entries[1]]["contributions"] = json.dumps(
        [
            {
                "family": "lgbm",
                "model": "lgbm_ROGUE_1h",
                "version": "v1",
                "weight": 1.0,
                "mu": 0.01,
                "p_up": 0.7,
            }
        ]
    )
    rows[entries[2]]["ts"] = str(int(rows[entries[2]]["ts"]) + 1)  # off the grid
    for i in entries[:3]:
        rows[i]["refuse"] = "yes"  # for expected_trades only
    broken = tmp_path / "signals.csv"
    with broken.open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=[c for c in rows[0] if c != "refuse"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    expected = expected_trades(rows, last_bar_open_ms())
    exported, log = run_backtest(
        freqtrade, tmp_path, broken, {"allowed_models": ["lgbm_BTCUSDT_1h"]}
    )
    got = as_trades(exported)
    assert [(t.open_ms, t.close_ms) for t in got] == [(t.open_ms, t.close_ms) for t in expected]
    for g, e in zip(got, expected, strict=True):
        # the stake is rounded to Binance's lot step (0.00001 BTC, under 1 USDT here)
        assert abs(g.position - e.position) * STAKE < 1.0, (g, e)
    assert len({round(t.position, 2) for t in got}) > 1
    refusals = [line for line in log.splitlines() if "quantum signals refused" in line]
    assert len(refusals) == 2, refusals  # malformed (nan, off-grid) and unknown_model
    assert any("2 rows malformed" in line for line in refusals)
    assert any(
        "1 rows unknown_model" in line and "lgbm_ROGUE_1h@v1" in line for line in refusals
    ), refusals


def test_a_hyperopt_reads_the_signal_file(freqtrade: Path, simulated: Path, tmp_path: Path) -> None:
    """Hyperopt tunes the entry threshold over the same signals: it runs
    offline and its best epoch trades."""
    user_data = make_user_data(tmp_path)
    with binance_markets_server() as (api_url, _):
        config = freqtrade_config(user_data, api_url, simulated, {})
        done = run_freqtrade(
            freqtrade,
            user_data,
            config,
            "hyperopt",
            "--timerange",
            FROM.replace("-", "") + "-",
            "--spaces",
            "buy",
            "--epochs",
            "4",
            "-j",
            "1",
            "--hyperopt-loss",
            "SharpeHyperOptLoss",
            "--random-state",
            "1",
        )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "entry_threshold" in done.stdout
    bars = sum(r["symbol"] == "BTCUSDT" for r in read_rows(simulated))
    log = (user_data / "freqtrade.log").read_text()
    assert f"quantum signals for BTC/USDT: {bars} bars" in log


# -- live: the reader on the daemon's signal stream ------------------------------------


@pytest.fixture
def strategy() -> ModuleType:
    module = load_strategy_module()
    assert not hasattr(module, "QuantumSignalStrategy") or "freqtrade" in sys.modules
    return module


@pytest.fixture
def published(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    """A real inference service (worker process, planted active xgb and
    rl_sizer: tests/planted_family.py) has published a signal for each of 30 bars."""
    import asyncio

    from tests.inference_helpers import Feeder, inference, make_config
    from tests.planted_family import install_version, planted_market

    bars = planted_market(30, 2)
    install_version(tmp_path, "xgb", {})
    install_version(tmp_path, "rl_sizer", {"positions": True, "until_ts": 0})  # sizes by guess

    async def scenario() -> None:
        async with inference(make_config(redis_url, tmp_path), ("xgb", "rl_sizer")) as (svc, st):
            await Feeder(svc, st, bars).feed(30)

    asyncio.run(scenario())
    yield bars


@pytest.fixture
def open_reader(strategy: ModuleType, redis_url: str) -> Iterator[Any]:
    """``open_reader(url=..., policy=...)``: a reader (the private Redis by
    default), closed after the test."""
    readers: list[Any] = []

    def open_one(url: str = redis_url, policy: Any = None) -> Any:
        readers.append(strategy.RedisSignalReader.from_url(url, policy=policy))
        return readers[-1]

    yield open_one
    for reader in readers:
        reader.close()


def stream_signals(redis_client: redis.Redis) -> dict[int, Any]:
    entries = redis_client.xrange(KEYS.signals("TESTUSDT", "1h"))
    return {s.ts: s for s in (parse_signal(fields) for _, fields in entries)}


def test_the_reader_gives_the_daemons_position_for_the_last_closed_candle(
    published: Any, open_reader: Any, redis_client: redis.Redis
) -> None:
    bars = published
    signals = stream_signals(redis_client)
    assert len(signals) == 30 and signals[int(bars.ts[-1])].position_source == "rl_sizer"
    reader = open_reader()
    last = int(bars.ts[-1])
    got = reader.read("TEST/USDT", "1h", last)
    assert (got.ts, got.position) == (last, signals[last].position)
    assert got.status == "live" and any(m.startswith("rl_sizer@v") for m in got.models)
    # Freqtrade a candle behind the daemon: the signal of its own last candle
    behind = reader.read("TEST/USDT", "1h", int(bars.ts[-4]))
    assert (behind.ts, behind.position) == (int(bars.ts[-4]), signals[int(bars.ts[-4])].position)
    # the daemon a bar behind (its signal not in yet): the previous one is still good
    assert reader.read("TEST/USDT", "1h", last + HOUR_MS).ts == last


def test_the_reader_refuses_stale_malformed_and_unknown_signals(
    strategy: ModuleType,
    published: Any,
    open_reader: Any,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bars = published
    last = int(bars.ts[-1])
    reader = open_reader()
    refused = strategy.SignalRefused

    with pytest.raises(refused) as stale:
        reader.read("TEST/USDT", "1h", last + 2 * HOUR_MS)
    assert stale.value.kind == "stale" and "2 bars old" in stale.value.reason

    with pytest.raises(refused) as none:
        reader.read("BTC/USDT", "1h", last)
    assert none.value.kind == "no_signal"

    allow_xgb_only = strategy.SignalPolicy(("xgb_TESTUSDT_1h",))
    picky = open_reader(policy=allow_xgb_only)
    with pytest.raises(refused) as unknown:
        picky.read("TEST/USDT", "1h", last)
    assert unknown.value.kind == "unknown_model" and "rl_sizer@v" in unknown.value.reason
    zoo = strategy.SignalPolicy(("xgb_TESTUSDT_1h", "rl_sizer@*"))
    assert open_reader(policy=zoo).read("TEST/USDT", "1h", last).ts == last

    fields = dict(redis_client.xrevrange(KEYS.signals("TESTUSDT", "1h"), count=1)[0][1])
    next_bar = last + HOUR_MS
    redis_client.xadd(
        KEYS.signals("TESTUSDT", "1h"), {**fields, "ts": str(next_bar), "position": "nan"}
    )
    with pytest.raises(refused) as malformed:
        reader.read("TEST/USDT", "1h", next_bar)
    assert malformed.value.kind == "malformed" and "position is nan" in malformed.value.reason
    del fields["p_up"]
    redis_client.xadd(KEYS.signals("TESTUSDT", "1h"), {**fields, "ts": str(next_bar)})
    with pytest.raises(refused, match="missing field p_up"):
        reader.read("TEST/USDT", "1h", next_bar)

    down = open_reader(url="redis://:secret@127.0.0.1:1/0")
    with pytest.raises(refused) as unreachable:
        down.read("TEST/USDT", "1h", last)
    assert unreachable.value.kind == "redis"
    assert strategy.redacted("redis://:secret@127.0.0.1:1/0") == "redis://:***@127.0.0.1:1/0"

    log = strategy.RefusalLog()
    with caplog.at_level(logging.INFO, logger="QuantumSignalStrategy"):
        for _ in range(3):
            log.refused("TEST/USDT", stale.value)
        log.refused("TEST/USDT", malformed.value)
        log.accepted("TEST/USDT", reader.read("TEST/USDT", "1h", last))
        log.refused("TEST/USDT", stale.value)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("stale" in m for m in messages) == 2  # once, and once more after recovering
    assert sum("malformed" in m for m in messages) == 1
    assert sum("accepted again" in m for m in messages) == 1


def probe_live(freqtrade: Path, redis_url: str, first_ms: int, *candles: int) -> Any:
    """The strategy inside Freqtrade, dry-run, on candles from ``first_ms``
    (each count in ``candles`` in turn, the last one closed): one answer per
    count, and the log (tests/freqtrade_live_probe.py)."""
    redis_py = ensure_redis_py(freqtrade.parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(redis_py)
    done = subprocess.run(
        [str(freqtrade.parent / "python"), str(LIVE_PROBE), str(STRATEGY), redis_url,
         str(first_ms), *map(str, candles)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    answers = [json.loads(line) for line in done.stdout.strip().splitlines()]
    return answers, done.stderr


def test_inside_freqtrade_the_strategy_trades_the_live_signal(
    freqtrade: Path, published: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    """Dry-run: the last closed candle gets the published position, its entry
    or exit, and the stake |position| of Freqtrade's; two bars after the
    daemon's last signal, nothing, and one warning for two looks."""
    bars = published
    signals = stream_signals(redis_client)
    first, last = int(bars.ts[0]), int(bars.ts[-1])
    (fresh, stale, again), log = probe_live(
        freqtrade, redis_url, first, len(bars), len(bars) + 2, len(bars) + 2
    )
    position = signals[last].position
    assert fresh["position"] == position
    assert (fresh["enter_long"], fresh["exit_long"]) == (position > 0, position <= 0)
    assert fresh["stake"] == pytest.approx(100.0 * abs(position))
    for refused in (stale, again):
        assert refused["position"] is None and not refused["enter_long"]
        assert not refused["exit_long"] and refused["stake"] == 0.0
    assert log.count("quantum signal refused for TEST/USDT: stale") == 1, log


def test_the_strategy_file_imports_without_freqtrade_or_quantum_daemon() -> None:
    """Freqtrade's venv has neither quantum_daemon nor (for backtests) redis-py."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('s', {str(STRATEGY)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'quantum_daemon' not in sys.modules and 'redis' not in sys.modules\n"
        "print(m.pair_symbol('BTC/USDT:USDT'), m.timeframe_ms('4h'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["BTCUSDT", "14400000"]
