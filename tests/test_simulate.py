"""``quantum-daemon simulate``: the loop on a simulated clock, through real
training workers (spawn pool), a real registry on disk and the live path's
decisions; small synthetic series so that it runs in seconds."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import (
    Config,
    EvaluationConfig,
    ModelsConfig,
    PromotionConfig,
    StorageConfig,
    TrainingConfig,
)
from quantum_daemon.simulate.engine import Simulation
from quantum_daemon.simulate.inputs import plan_series
from quantum_daemon.training.pool import PoolSettings, ProcessPool
from quantum_daemon_dev.markets import garch_walk
from tests.judge_rules import OLD_RULES

HOUR_MS = 3_600_000
START_MS = 1_704_067_200_000  # 2024-01-01
HISTORY = 400
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


def config(tmp: Path) -> Config:
    return Config(
        storage=StorageConfig(data_dir=tmp / "data"),
        training=TrainingConfig(history_bars=HISTORY, workers=2),
        models=ModelsConfig(families=("lgbm",), symbols=("BTCUSDT",), retrain_every_bars=60),
        evaluation=EvaluationConfig(horizon=4, n_test_windows=2),
        # the rules of issue #13 off: these tests are about the simulation
        # itself (tests/test_judge_simulate.py runs the judge's defaults)
        promotion=PromotionConfig(
            min_trades=0,
            min_profit_factor=0.0,
            shadow_min_bars=12,
            shadow_max_bars=48,
            **OLD_RULES,
        ),
    )


def walk(n: int, seed: int, symbol: str = "BTCUSDT", trend: float = 0.0) -> Bars:
    """A random walk with volatility clustering; with ``trend``, a planted
    momentum edge whose sign flips every 120 bars (``markets.garch_walk``)."""
    return garch_walk(n, seed, symbol, trend)


def run_sim(cfg: Config, bars: list[Bars], out: Path, end_ms: int | None = None) -> Simulation:
    series = plan_series(bars, cfg.training.history_bars, None, end_ms)

    async def go() -> Simulation:
        pool = ProcessPool(PoolSettings.from_config(cfg, gpu_present=False))
        async with pool:
            sim = Simulation(cfg, series, list(cfg.models.families), out / "registry", pool)
            await sim.run()
        return sim

    return asyncio.run(go())


def outputs_until(sim: Simulation, t_ms: int) -> dict[str, object]:
    """Everything the simulation decided at bar closes up to ``t_ms``."""
    bars = [
        (r.ts, r.close, sorted((k, st, p.mu, p.p_up) for k, (st, p) in r.forecasts.items()),
         sorted(r.weights.items()), json.dumps(r.signal, sort_keys=True))
        for rs in sim.bars.values() for r in rs if r.ts + HOUR_MS <= t_ms
    ]  # fmt: skip
    timeline = [(e.ts, e.kind, e.model_id, e.version, e.detail) for e in sim.timeline]
    return {
        "bars": bars,
        "timeline": [e for e in timeline if e[0] <= t_ms],
        "trust": [h for h in sim.trust_history if h[0] <= t_ms],
    }


def test_no_look_ahead_bars_after_t_change_nothing_up_to_t(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    n, cut = HISTORY + 260, HISTORY + 150
    real = walk(n, seed=3)
    first = run_sim(cfg, [real], tmp_path / "a")
    other = walk(n, seed=99)  # the future replaced by another random walk
    tail = real.close[cut - 1] * np.exp(np.cumsum(np.diff(np.log(other.close[cut - 1 :]))))
    close = np.concatenate([real.close[:cut], tail])
    swapped = replace(
        real,
        close=close,
        open=np.concatenate([real.open[:cut], close[cut - 1 : -1]]),
        high=np.concatenate([real.high[:cut], np.maximum(close[cut - 1 : -1], tail) * 1.001]),
        low=np.concatenate([real.low[:cut], np.minimum(close[cut - 1 : -1], tail) * 0.999]),
        volume=np.concatenate([real.volume[:cut], other.volume[cut:]]),
    )
    second = run_sim(cfg, [swapped], tmp_path / "b")
    t_ms = int(real.ts[cut - 1]) + HOUR_MS  # close of the last shared bar
    a, b = outputs_until(first, t_ms), outputs_until(second, t_ms)
    assert len(a["bars"]) == cut - HISTORY
    assert first.jobs_done >= 3  # several retrainings happened before T
    assert any(e[1] == "promoted" for e in a["timeline"])  # the lifecycle moved before T
    assert a == b
    # ... and the future did matter afterwards (the comparison is not vacuous)
    assert outputs_until(first, 10**15)["bars"] != outputs_until(second, 10**15)["bars"]


def _frame(bars: Bars) -> pd.DataFrame:
    frame = bars.to_frame()
    frame["date"] = pd.to_datetime(frame.pop("ts"), unit="ms", utc=True)
    return frame[["date", "open", "high", "low", "close", "volume"]]


def write_feather(bars: Bars, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bars.symbol[:-4]}_USDT-{bars.tf}.feather"
    _frame(bars).to_feather(path)
    return path


def write_config(tmp: Path) -> Path:
    path = tmp / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{tmp / "data"}"\n'
        f"[training]\nhistory_bars = {HISTORY}\n"
        '[models]\nfamilies = ["lgbm"]\nretrain_every_bars = 60\n'
        "[evaluation]\nhorizon = 4\nn_test_windows = 2\n"
        "[promotion]\nmin_trades = 0\nmin_profit_factor = 0.0\n"
        "shadow_min_bars = 12\nshadow_max_bars = 48\n"
        "min_dsr = 0.0\nbeat_baselines = false\nmax_ece = 1.0\ndm_alpha = 1.0\n"
    )
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantum_daemon", *args], capture_output=True, text=True, timeout=600
    )


def test_the_same_inputs_give_the_same_summary_byte_for_byte(tmp_path: Path) -> None:
    data = write_feather(walk(HISTORY + 200, seed=5), tmp_path / "bars")
    cfg = write_config(tmp_path)
    outs = []
    for name in ("one", "two"):
        out = tmp_path / name
        done = cli("--config", str(cfg), "simulate", "--data", str(data), "--out", str(out))
        assert done.returncode == 0, done.stderr
        outs.append(out)
    first = (outs[0] / "summary.json").read_bytes()
    assert first == (outs[1] / "summary.json").read_bytes()
    assert (outs[0] / "signals.csv").read_bytes() == (outs[1] / "signals.csv").read_bytes()
    summary = json.loads(first)
    assert {"loop", "equal_weights", "newest_wins", "family:lgbm", "buy_and_hold", "flat"} <= set(
        summary["variants"]
    )
    assert summary["n_trials"] == 4  # loop, equal weights, newest wins, lgbm alone
    assert summary["models"]["lgbm_BTCUSDT_1h"]["trained"] >= 3
    signals = pd.read_csv(outs[0] / "signals.csv")
    assert list(signals.columns[:3]) == ["ts", "symbol", "tf"] and len(signals) > 0
    live = signals[signals["status"] != "flat"]
    assert len(live) > 0 and (live["q05"] < live["q95"]).all()  # the pooled intervals
    intervals = summary["intervals"]["lgbm"]
    assert intervals["n"] > 0 and 0.0 <= intervals["coverage_90"] <= 1.0
    assert summary["models"]["lgbm_BTCUSDT_1h"]["coverage_90"] == intervals["coverage_90"]
    timeline = pd.read_csv(outs[0] / "timeline.csv")
    assert {"trained", "evaluated"} <= set(timeline["event"])
    returns = pd.read_csv(outs[0] / "variant_returns.csv")
    assert set(returns["variant"]) == set(summary["variants"])
    assert returns.groupby("variant")["trial"].first().sum() == summary["n_trials"]
    for name, net in returns.groupby("variant")["net"]:  # the figures (10 digits) come from these
        expected = summary["variants"][name]["total_return"]
        assert np.prod(1.0 + net.to_numpy()) - 1.0 == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--families", "nope"], "unknown family 'nope'"),
        (["--from", "2030-01-01"], "no bars in the simulated range"),
        (["--from", "not-a-date"], "not a date"),
    ],
)
def test_bad_input_gets_a_message_and_exit_2_not_a_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    data = write_feather(walk(HISTORY + 50, seed=1), tmp_path / "bars")
    done = cli("--config", str(write_config(tmp_path)), "simulate", "--data", str(data), *args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_file_of_two_symbols_is_refused(tmp_path: Path) -> None:
    btc, eth = (
        _frame(walk(HISTORY + 50, seed=1)),
        _frame(walk(HISTORY + 50, seed=2, symbol="ETHUSDT")),
    )
    cfg = str(write_config(tmp_path))
    tagged = pd.concat([btc.assign(symbol="BTCUSDT"), eth.assign(symbol="ETHUSDT")])
    tagged.to_csv(with_symbol := tmp_path / "BTC_USDT-1h.csv", index=False)
    pd.concat([btc, eth]).reset_index(drop=True).to_feather(
        untagged := tmp_path / "ETH_USDT-1h.feather"
    )
    for path, message in ((with_symbol, "2 symbols in one file"), (untagged, "repeat")):
        done = cli("--config", cfg, "simulate", "--data", str(path))
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr


def test_a_gap_longer_than_the_training_window_is_refused(tmp_path: Path) -> None:
    bars = walk(HISTORY * 3, seed=2)
    keep = np.r_[0 : HISTORY + 10, 2 * HISTORY + 20 : HISTORY * 3]
    gapped = Bars("BTCUSDT", "1h", *(getattr(bars, c)[keep] for c in
                  ("ts", "open", "high", "low", "close", "volume")))  # fmt: skip
    data = write_feather(gapped, tmp_path / "bars")
    done = cli("--config", str(write_config(tmp_path)), "simulate", "--data", str(data))
    assert done.returncode == 2
    assert "gap of" in done.stderr and "Traceback" not in done.stderr


def test_files_of_two_timeframes_are_refused(tmp_path: Path) -> None:
    hourly = write_feather(walk(HISTORY + 50, seed=1), tmp_path / "bars")
    four = walk(HISTORY + 50, seed=2)
    four = replace(four, tf="4h", ts=START_MS + 4 * HOUR_MS * np.arange(len(four)))
    other = write_feather(four, tmp_path / "bars")
    done = cli(
        "--config", str(write_config(tmp_path)), "simulate", "--data", str(hourly), str(other)
    )
    assert done.returncode == 2 and "several timeframes" in done.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    data = write_feather(walk(HISTORY + 150, seed=7), tmp_path / "bars")
    out = tmp_path / "out"
    done = cli("--config", str(write_config(tmp_path)), "simulate", "--data", str(data),
               "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--dump-dom",
             (out / "report.html").as_uri()],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    errors = [line for line in browser.stderr.splitlines() if "CONSOLE" in line]
    assert not errors, "\n".join(errors)
    dom = browser.stdout
    for plot in ("equity", "drawdown", "trust", "timeline"):
        assert f'id="{plot}"' in dom, plot
    assert dom.count("<polyline") >= 7  # every variant's equity line
    assert "<circle" in dom  # the promotion timeline's events
    assert "buy_and_hold" in dom and "loop" in dom


def loop_figures(tmp: Path, bars: Bars, cfg: Config | None = None) -> dict[str, dict[str, float]]:
    from quantum_daemon.simulate.run import _newest
    from quantum_daemon.simulate.variants import evaluate, policies, summarize

    cfg = cfg or config(tmp)
    sim = run_sim(cfg, [bars], tmp)
    policy_map = policies(["lgbm"], cfg.evaluation.position_threshold, _newest(sim))
    results = evaluate({k[0]: v for k, v in sim.bars.items()}, policy_map, sim.cost_rate)
    return summarize(results, "1h", 0.0)["variants"]


@pytest.mark.parametrize("seed", range(10))
def test_a_random_walk_gives_no_significant_loop(tmp_path: Path, seed: int) -> None:
    """Each seed is recorded; the 9-of-10 rule is checked by the next test."""
    figures = loop_figures(tmp_path, walk(HISTORY + 300, seed=100 + seed))
    RANDOM_WALK_DSR[seed] = figures["loop"]["dsr"]


RANDOM_WALK_DSR: dict[int, float | None] = {}


def test_at_most_one_random_walk_seed_reaches_a_deflated_sharpe_of_095() -> None:
    if len(RANDOM_WALK_DSR) < 10:
        pytest.skip("runs after the ten random-walk seeds")
    significant = [s for s, d in RANDOM_WALK_DSR.items() if d is not None and d >= 0.95]
    assert len(significant) <= 1, RANDOM_WALK_DSR


MOMENTUM_SEEDS = range(8, 13)
MOMENTUM: dict[int, tuple[float, float, int]] = {}


@pytest.mark.parametrize("seed", MOMENTUM_SEEDS)
def test_a_planted_momentum_market_is_simulated(tmp_path: Path, seed: int) -> None:
    """Each seed's loop and buy-and-hold Sharpe; the rule is checked below."""
    base = config(tmp_path)
    cfg = replace(
        base,
        training=replace(base.training, history_bars=1500),
        models=replace(base.models, retrain_every_bars=100),
    )
    figures = loop_figures(tmp_path, walk(1500 + 800, seed=seed, trend=0.001), cfg)
    loop, hold = figures["loop"], figures["buy_and_hold"]
    MOMENTUM[seed] = (loop["sharpe"], hold["sharpe"], loop["trades"])


def test_the_loop_finds_the_planted_edge_and_beats_buy_and_hold() -> None:
    if len(MOMENTUM) < len(MOMENTUM_SEEDS):
        pytest.skip("runs after the momentum seeds")
    wins = [s for s, (loop, hold, trades) in MOMENTUM.items() if loop > hold and trades > 0]
    assert len(wins) > len(MOMENTUM) / 2, MOMENTUM
    assert np.mean([v[0] for v in MOMENTUM.values()]) > np.mean([v[1] for v in MOMENTUM.values()])


def test_each_familys_newest_versions_alone_are_a_variant_when_there_are_several() -> None:
    from quantum_daemon.simulate.records import BarRecord, Prediction
    from quantum_daemon.simulate.variants import policies, pooled_position

    up, down = Prediction(0.01, 0.8, None), Prediction(-0.01, 0.2, None)
    newest = [("lgbm_BTCUSDT_1h", up), ("xgb_BTCUSDT_1h", down)]
    record = BarRecord(0, 100.0, {}, {}, {}, None, "BTCUSDT")
    both = policies(["lgbm", "xgb", "rl_sizer"], 0.0, lambda _r: newest)
    assert both["newest:lgbm"](record) == pooled_position(newest[:1], 0.0) > 0
    assert both["newest:xgb"](record) == pooled_position(newest[1:], 0.0) < 0
    assert "newest:rl_sizer" not in both
    assert not any(name.startswith("newest:") for name in policies(["lgbm"], 0.0, lambda _r: []))
