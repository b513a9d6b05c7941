"""Benchmark: fit + walk-forward evaluation time per model family.

Two datasets of real Binance bars from ../shared/data/market:

- 2,105 bars: the last 2,105 BTC/USDT 1h bars (90 days of 1h bars, the
  daemon's production training size, ``training.history_bars``);
- 45,000 bars: the last 45,000 BTC/USDT 5m bars (the 1h file has only 5,980;
  the 5m file is the same market at a finer grid).

Each run is ``walk_forward`` with the default evaluation settings (three test
windows, a refit for each: three fits) plus the backtest and all metrics,
in one process with the family's default thread count (1). The table shows
the median of ``--repeats`` runs (after one warm-up run), the share of one
test window (one fit + its predictions), and the trees the last fit kept.
Adding a family is one line in ``FAMILIES``.

The ``-tuned`` rows time a tuned version: the Optuna search of
``training.tuning`` (``--trials`` trials, default 10, TPE seed 42, median
pruning, no time limit) on the first fold's validation window, then the same
walk-forward evaluation with the best parameters; beside the untuned row of
the same family in the same run.

The multi-symbol rows (``--multi``, default ``lgbm``; ``none`` skips them)
time one version of a global model (``{family}_multi_1h``,
``walkforward_multi``) over the last 2,105 1h bars of BTC, ETH and SOL
against its baseline in the same process: three single-symbol versions, one
per symbol, on the same bars. ``ratio`` is the multi version's median over
the median of the three single versions together.

    .venv/bin/python scripts/bench_train.py [--repeats 3] [--families xgb,lgbm,lgbm-tuned]
        [--trials 10] [--multi lgbm,nhits] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, walk_forward
from quantum_daemon.core.evaluation.walkforward_multi import walk_forward_multi
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import TuningConfig
from quantum_daemon.models import multi
from quantum_daemon.models.families import family_class
from quantum_daemon.storage.bar_files import read_bar_file
from quantum_daemon.training.tuning import tune

MARKET = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"

# row label -> (family, hyper-parameter overrides); {} is the family's defaults. The
# "-400" rows switch early stopping off (patience 400 = all 400 rounds): the worst case.
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "xgb": ("xgb", {}),
    "lgbm": ("lgbm", {}),
    "xgb-400": ("xgb", {"early_stopping_rounds": 400}),
    "lgbm-400": ("lgbm", {"early_stopping_rounds": 400}),
    "nhits": ("nhits", {}),
    "patchtst": ("patchtst", {}),
    "xgb-tuned": ("xgb", {}),
    "lgbm-tuned": ("lgbm", {}),
}
TRIALS = {"n": 10}  # tuning trials of the "-tuned" rows (--trials)


@dataclass(frozen=True)
class Dataset:
    label: str
    file: str
    n_bars: int


DATASETS = (
    Dataset("2105 x BTC 1h", "BTC_USDT-1h.feather", 2105),
    Dataset("45000 x BTC 5m", "BTC_USDT-5m.feather", 45_000),
)


def load(dataset: Dataset) -> Bars:
    file = read_bar_file(MARKET / dataset.file)
    bars = Bars.from_frame(file.frame, file.symbol, file.tf)
    return bars.slice(len(bars) - dataset.n_bars, None)


def time_once(label: str, bars: Bars, settings: EvaluationSettings) -> dict[str, float]:
    family, params = FAMILIES[label]
    started = time.perf_counter()
    tuning_s, pruned = 0.0, 0.0
    if label.endswith("-tuned"):
        plan = TuningConfig(enabled=True, max_trials=TRIALS["n"], timeout_s=0.0)
        found = tune(family, family_class(family), bars, settings, 0, params, plan)
        params, tuning_s, pruned = found.params, time.perf_counter() - started, found.n_pruned
    evaluation = walk_forward(family_class(family), bars, settings, seed=0, params=params)
    seconds = time.perf_counter() - started
    report = evaluation.report
    return {
        "seconds": seconds,
        "tuning_s": tuning_s,
        "pruned": float(pruned),
        "fits": float(sum(o.refitted for o in report.folds)),
        "trees": float(report.folds[-1].fit.best_iteration),
        "sharpe": report.trading.sharpe,
    }


def bench(family: str, dataset: Dataset, repeats: int) -> dict[str, Any]:
    bars = load(dataset)
    settings = EvaluationSettings()
    time_once(family, bars, settings)  # warm-up: imports, first allocation
    runs = [time_once(family, bars, settings) for _ in range(repeats)]
    median = statistics.median(r["seconds"] for r in runs)
    return {
        "family": family,
        "dataset": dataset.label,
        "n_bars": len(bars),
        "repeats": repeats,
        "median_s": round(median, 4),
        "per_window_s": round(median / runs[0]["fits"], 4),
        "min_s": round(min(r["seconds"] for r in runs), 4),
        "max_s": round(max(r["seconds"] for r in runs), 4),
        "trees_last_fit": int(runs[0]["trees"]),
        "trials": TRIALS["n"] if family.endswith("-tuned") else 0,
        "tuning_median_s": round(statistics.median(r["tuning_s"] for r in runs), 4),
        "pruned_trials": int(runs[0]["pruned"]),
        "sharpe": round(runs[0]["sharpe"], 3),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'family':<12}{'dataset':<16}{'bars':>7}{'median s':>10}{'per window s':>14}"
    head += f"{'min s':>8}{'max s':>8}{'trees':>7}{'trials':>8}{'pruned':>8}{'tuning s':>10}"
    head += f"{'sharpe':>8}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['family']:<12}{r['dataset']:<16}{r['n_bars']:>7}{r['median_s']:>10.3f}"
            f"{r['per_window_s']:>14.3f}{r['min_s']:>8.3f}{r['max_s']:>8.3f}{r['trees_last_fit']:>7}"
            f"{r['trials']:>8}{r['pruned_trials']:>8}{r['tuning_median_s']:>10.3f}{r['sharpe']:>8.3f}"
        )
    return "\n".join(lines)


MULTI_FILES = ("BTC_USDT-1h.feather", "ETH_USDT-1h.feather", "SOL_USDT-1h.feather")
MULTI_BARS = 2105


def multi_series() -> dict[str, Bars]:
    series = [load(Dataset(name, name, MULTI_BARS)) for name in MULTI_FILES]
    return {bars.symbol: bars for bars in series}


def time_multi_once(family: str, series: dict[str, Bars]) -> tuple[float, float]:
    """(seconds of one multi version, seconds of the single versions of every symbol)."""
    settings = EvaluationSettings()
    started = time.perf_counter()
    walk_forward_multi(multi.family_class(family), series, settings, seed=0)
    multi_s = time.perf_counter() - started
    started = time.perf_counter()
    for bars in series.values():
        walk_forward(family_class(family), bars, settings, seed=0)
    return multi_s, time.perf_counter() - started


def bench_multi(family: str, repeats: int) -> dict[str, Any]:
    series = multi_series()
    time_multi_once(family, series)  # warm-up
    runs = [time_multi_once(family, series) for _ in range(repeats)]
    multi_s = statistics.median(r[0] for r in runs)
    singles_s = statistics.median(r[1] for r in runs)
    return {
        "family": f"{family}-multi",
        "symbols": list(series),
        "n_bars_each": MULTI_BARS,
        "repeats": repeats,
        "multi_median_s": round(multi_s, 4),
        "singles_median_s": round(singles_s, 4),
        "ratio": round(multi_s / singles_s, 3),
    }


def multi_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'family':<14}{'symbols':<26}{'bars each':>10}{'multi s':>10}{'3 singles s':>13}"
    lines = [head + f"{'ratio':>8}"]
    for r in rows:
        lines.append(
            f"{r['family']:<14}{','.join(r['symbols']):<26}{r['n_bars_each']:>10}"
            f"{r['multi_median_s']:>10.3f}{r['singles_median_s']:>13.3f}{r['ratio']:>8.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--trials", type=int, default=10, help="tuning trials of -tuned rows")
    parser.add_argument("--multi", default="lgbm", help="families of multi-symbol rows, or none")
    args = parser.parse_args()
    TRIALS["n"] = args.trials
    rows = [
        bench(family, dataset, args.repeats)
        for dataset in DATASETS
        for family in args.families.split(",")
        if family
    ]
    multi_families = [] if args.multi == "none" else args.multi.split(",")
    multi_rows = [bench_multi(family, args.repeats) for family in multi_families]
    result = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "rows": rows,
        "multi_rows": multi_rows,
    }
    if rows:
        print(table(rows))
    if multi_rows:
        print(multi_table(multi_rows))
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
