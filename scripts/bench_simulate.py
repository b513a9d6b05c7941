"""Benchmark: ``simulate`` speed, against the bare fits of the same versions.

Default: one year of 1h bars (8,760 simulated bars after a 2,105-bar first
window) for two symbols, lgbm only, retrained every 168 bars (about 106
versions), two training workers, the shipped gates. The bars are synthetic
(a GARCH-like random walk, seeded): ../shared/data/market holds 2024 only,
too short for a year after the first window. Printed: wall time, versions
per second, and the overhead ratio = wall time / the sum of the bare fit
times of the same versions (one LightGBM fit on each version's window,
train on the first 85%, early stopping on the rest, in this process, after
the simulation). Reference (the issue, same work in Freqtrade FreqAI on
this kind of machine): 106 models in 83 s wall; the goal is a third of that.

``--zoo``: all six families (``rl_sizer`` sizing the loop's ensemble) for a
quarter of a year, with the time each family spent training in the workers
and the wall time of the forecasts and the sizing calls.

    .venv/bin/python scripts/bench_simulate.py [--bars 8760] [--zoo] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import Config, ModelsConfig, StorageConfig, TrainingConfig
from quantum_daemon.simulate.engine import Simulation
from quantum_daemon.simulate.inputs import plan_series
from quantum_daemon.training.pool import PoolSettings, ProcessPool

HISTORY = 2105
FREQAI_REFERENCE_S = 83.0
START_MS = 1_609_459_200_000  # 2021-01-01


def synthetic(symbol: str, n: int, seed: int) -> Bars:
    rng = np.random.default_rng(seed)
    r = np.empty(n)
    v, prev = 0.006, 0.0
    for k in range(n):
        v = np.sqrt(2e-6 + 0.08 * prev**2 + 0.87 * v**2)
        r[k] = prev = v * rng.standard_normal()
    close = 30_000.0 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[close[0]], close[:-1]])
    wick = np.abs(rng.normal(0, 0.002, n)) * close
    return Bars(
        symbol, "1h", START_MS + 3_600_000 * np.arange(n, dtype=np.int64), open_,
        np.maximum(open_, close) + wick, np.minimum(open_, close) - wick, close,
        rng.uniform(100, 200, n),
    )  # fmt: skip


async def simulate(cfg: Config, bars: list[Bars], out: Path) -> tuple[Simulation, float]:
    series = plan_series(bars, cfg.training.history_bars, None, None)
    pool = ProcessPool(PoolSettings.from_config(cfg, gpu_present=False))
    async with pool:
        started = time.perf_counter()
        sim = Simulation(cfg, series, list(cfg.models.families), out, pool)
        await sim.run()
        return sim, time.perf_counter() - started


def bare_fit_seconds(sim: Simulation, cfg: Config) -> float:
    """One plain fit per trained version, on that version's window."""
    from quantum_daemon.models.base import TrainSet
    from quantum_daemon.models.families import family_class

    total = 0.0
    h = cfg.evaluation.horizon
    for record in sim.versions.values():
        bars = sim.series[(record.symbol, sim.tf)].bars
        window = bars.slice(
            max(0, record.trained_at - cfg.training.history_bars), record.trained_at
        )
        split = int(len(window) * 0.85)
        data = TrainSet(
            bars=window, horizon=h, train_idx=np.arange(0, split - h),
            val_idx=np.arange(split, len(window) - h), seed=cfg.models.seed, params={},
        )  # fmt: skip
        model = family_class(record.family)()
        started = time.perf_counter()
        model.fit(data)
        total += time.perf_counter() - started
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=8760, help="simulated bars per symbol")
    parser.add_argument("--zoo", action="store_true", help="every family, a quarter of a year")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    families: tuple[str, ...] = ("lgbm",)
    n = args.bars
    if args.zoo:
        families, n = ("xgb", "lgbm", "nhits", "patchtst", "evo_model", "rl_sizer"), 2190
    cfg = Config(
        storage=StorageConfig(data_dir=Path(tempfile.mkdtemp()) / "data"),
        training=TrainingConfig(history_bars=HISTORY, workers=2),
        models=ModelsConfig(families=families, symbols=("BTCUSDT", "ETHUSDT")),
    )
    bars = [synthetic("BTCUSDT", HISTORY + n, 1), synthetic("ETHUSDT", HISTORY + n, 2)]
    out = Path(tempfile.mkdtemp()) / "registry"
    sim, wall = asyncio.run(simulate(cfg, bars, out))
    figures: dict[str, Any] = {
        "families": list(families),
        "simulated_bars_per_symbol": n,
        "versions": sim.jobs_done,
        "failed": sim.jobs_failed,
        "wall_s": round(wall, 2),
        "versions_per_s": round(sim.jobs_done / wall, 3),
        "training_s_by_family": {f: round(s, 2) for f, s in sorted(sim.job_seconds.items())},
    }
    if not args.zoo:
        bare = bare_fit_seconds(sim, cfg)
        figures["bare_fit_sum_s"] = round(bare, 2)
        figures["overhead_ratio"] = round(wall / bare, 3) if bare else None
        figures["vs_freqai_reference"] = round(wall / FREQAI_REFERENCE_S, 3)
    json.dump(figures, sys.stdout, indent=2)
    print()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
