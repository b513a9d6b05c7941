#!/usr/bin/env python
"""Benchmark: what each rule of the judge does (issue #13), with ``simulate``.

Two kinds of synthetic hourly market (``quantum_daemon_dev.markets``):

- random walks with volatility clustering (``--seeds``, default 20): there
  is nothing to find, so every bar with capital at risk (a non-zero
  ``position`` in the published signal, what ``signals.csv`` holds) is a
  cost; the figure is the share of simulated bars with a position, per seed
  (median, worst) and pooled, against the goal of at most 5%;
- planted edges (``--edge-seeds``, default 10): the same walks with a drift
  of ``--trend`` per bar whose sign flips every 120 bars; the figure is the
  number of bars from the first simulated bar to the first promotion (the
  median over seeds; never: counted as not activated), and the share of
  bars with a position.

Each market is simulated once per variant: the judge's defaults (``all
rules``), each rule switched off in turn (its off value, docs/judge.md),
and every rule off (``none``: the gates before issue #13). Same bars, same
seeds, same training settings in every variant: only the rule differs.

Settings (printed): the shipped config's defaults except ``--families``
(default lgbm, to keep the run short), ``history_bars`` 1500,
``retrain_every_bars`` 100, ``horizon`` 4 and 2 test windows, ``--bars``
(800) simulated bars after the first window. Two training workers.

    .venv/bin/python scripts/bench_judge.py [--seeds 20] [--edge-seeds 10]
        [--trend 0.002] [--bars 800] [--variants all_rules no_record_rule ...]
        [--json FILE]
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
from quantum_daemon_dev.markets import HOUR_MS, garch_walk

HISTORY = 1500
GOAL_EXPOSURE = 0.05
RULES_OFF: dict[str, dict[str, Any]] = {
    "all_rules": {},
    "no_sanity_gates": {"beat_baselines": False, "max_ece": 1.0},
    "no_record_rule": {"min_dsr": 0.0},
    "no_trial_count": {"trial_scope": "config"},
    "no_dm_test": {"dm_alpha": 1.0},
    "no_drift": {"drift_delta": 0.0},
    "no_stale": {"max_age_bars": 0},
    "no_kill_switch": {"kill_window": 0},
    "none": {
        "beat_baselines": False,
        "max_ece": 1.0,
        "min_dsr": 0.0,
        "dm_alpha": 1.0,
        "drift_delta": 0.0,
        "max_age_bars": 0,
        "kill_window": 0,
        "shadow_min_bars": 48,
        "shadow_max_bars": 240,
    },
}


def config(data_dir: Path, families: list[str], rules_off: dict[str, Any]) -> Config:
    return Config(
        storage=StorageConfig(data_dir=data_dir),
        training=TrainingConfig(history_bars=HISTORY, workers=2),
        models=ModelsConfig(families=tuple(families), symbols=("BTCUSDT",), retrain_every_bars=100),
        evaluation=EvaluationConfig(horizon=4, n_test_windows=2),
        promotion=replace(PromotionConfig(), **rules_off),
    )


async def simulate(cfg: Config, bars: Any, out: Path) -> Simulation:
    series = plan_series([bars], cfg.training.history_bars, None, None)
    async with ProcessPool(PoolSettings.from_config(cfg, gpu_present=False)) as pool:
        sim = Simulation(cfg, series, list(cfg.models.families), out, pool)
        await sim.run()
    return sim


def figures(sim: Simulation) -> dict[str, Any]:
    rows = [b for bars in sim.bars.values() for b in bars]
    held = sum(1 for b in rows if b.signal is not None and float(b.signal["position"]) != 0.0)
    start = min(b.ts for b in rows)
    promoted = [e.ts for e in sim.timeline if e.kind == "promoted"]
    kinds = [e.kind for e in sim.timeline]
    return {
        "bars": len(rows),
        "exposure": held / len(rows),
        "activation_bars": None if not promoted else (min(promoted) - start) // HOUR_MS,
        "versions": sim.jobs_done,
        "promotions": len(promoted),
        "drifts": kinds.count("drift_detected"),
        "stale": sum(1 for e in sim.timeline if e.kind == "retired" and "stale" in e.detail),
        "kill_switch": kinds.count("kill_switch"),
    }


def run_market(
    kind: str, seed: int, trend: float, args: argparse.Namespace, variants: list[str]
) -> dict[str, dict[str, Any]]:
    bars = garch_walk(HISTORY + args.bars, seed, trend=trend)
    out: dict[str, dict[str, Any]] = {}
    for variant in variants:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config(Path(tmp), args.families, RULES_OFF[variant])
            started = time.perf_counter()
            sim = asyncio.run(simulate(cfg, bars, Path(tmp) / "registry"))
            out[variant] = figures(sim) | {"seconds": round(time.perf_counter() - started, 2)}
        f = out[variant]
        print(
            f"  {kind} seed {seed:3d} {variant:16} exposure {f['exposure']:6.1%} "
            f"activation {f['activation_bars']!s:>5} versions {f['versions']:3d} "
            f"promotions {f['promotions']:2d} drifts {f['drifts']} kill {f['kill_switch']} "
            f"({f['seconds']} s)",
            flush=True,
        )
    return out


def summarize(
    walks: list[dict[str, dict[str, Any]]], edges: list[dict[str, dict[str, Any]]], variant: str
) -> dict[str, Any]:
    exposure = [w[variant]["exposure"] for w in walks]
    bars = sum(w[variant]["bars"] for w in walks)
    held = sum(w[variant]["exposure"] * w[variant]["bars"] for w in walks)
    activated = [e[variant]["activation_bars"] for e in edges]
    found = [a for a in activated if a is not None]
    return {
        "walk_exposure_median": statistics.median(exposure) if exposure else None,
        "walk_exposure_worst": max(exposure) if exposure else None,
        "walk_exposure_pooled": held / bars if bars else None,
        "walk_seeds_over_goal": sum(1 for x in exposure if x > GOAL_EXPOSURE),
        "edge_activated": f"{len(found)}/{len(activated)}",
        "edge_activation_bars_median": statistics.median(found) if found else None,
        "edge_exposure_median": (
            statistics.median(e[variant]["exposure"] for e in edges) if edges else None
        ),
    }


def print_table(summary: dict[str, dict[str, Any]], n_walks: int) -> None:
    head = (
        f"{'variant':16} {'walk exp. med':>13} {'worst':>7} {'pooled':>7} "
        f"{'seeds>5%':>9} {'edge live':>9} {'bars to live':>12} {'edge exp.':>9}"
    )
    print(head)
    for variant, s in summary.items():

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.1%}"

        print(
            f"{variant:16} {pct(s['walk_exposure_median']):>13} {pct(s['walk_exposure_worst']):>7} "
            f"{pct(s['walk_exposure_pooled']):>7} {s['walk_seeds_over_goal']:>5}/{n_walks:<3} "
            f"{s['edge_activated']:>9} {s['edge_activation_bars_median']!s:>12} "
            f"{pct(s['edge_exposure_median']):>9}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20, help="random-walk markets")
    parser.add_argument("--edge-seeds", type=int, default=10, help="planted-edge markets")
    parser.add_argument("--trend", type=float, default=0.002, help="the planted drift per bar")
    parser.add_argument("--bars", type=int, default=800, help="simulated bars per market")
    parser.add_argument("--families", nargs="+", default=["lgbm"])
    parser.add_argument("--variants", nargs="+", default=list(RULES_OFF), choices=list(RULES_OFF))
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    print(
        f"families {args.families}, history_bars {HISTORY}, retrain every 100 bars, horizon 4, "
        f"{args.bars} simulated bars per market; {args.seeds} random walks (seeds 100..), "
        f"{args.edge_seeds} planted edges (trend {args.trend}, seeds 200..)",
        flush=True,
    )
    started = time.perf_counter()
    walks = [run_market("walk", 100 + s, 0.0, args, args.variants) for s in range(args.seeds)]
    edges = [
        run_market("edge", 200 + s, args.trend, args, args.variants)
        for s in range(args.edge_seeds)
    ]
    summary = {v: summarize(walks, edges, v) for v in args.variants}
    print()
    print_table(summary, len(walks))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.json:
        document = {"settings": vars(args) | {"json": str(args.json)}, "summary": summary,
                    "walks": walks, "edges": edges}  # fmt: skip
        args.json.write_text(json.dumps(document, indent=1))
    all_rules = summary.get("all_rules")
    if all_rules and all_rules["walk_exposure_pooled"] is not None:
        ok = all_rules["walk_exposure_pooled"] <= GOAL_EXPOSURE
        print(f"all rules: pooled random-walk exposure {'within' if ok else 'OVER'} the 5% goal")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
