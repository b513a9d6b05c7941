"""Study: what shaping the models earns, measured with ``simulate`` on real bars.

Runs ``quantum-daemon simulate`` once per arm on the same bars, span, families,
seeds and costs, each arm one change to the config (context features, tuning,
one model over several symbols), and prints one table: per arm the loop as
configured, ``newest_wins`` (each model's newest version, no gates: the raw
quality of what the arm trains), ``newest:{family}`` (the same, one family),
each family's gated active version alone and buy-and-hold, with

- ``dsr_run``: the deflated Sharpe of ``summary.json`` (the run's variants as
  trials), and
- ``dsr_study``: deflated by every trial of the whole study: every variant
  judged in every arm, every version trained and every tuning trial (the
  registries' ledgers), with the Sharpe variance of all those variants.

A configuration tried is a trial: reading the best arm without ``dsr_study``
is reading noise. Arms: ``base`` (the config as given), ``context``
(``[features] context = true``), ``tuned`` (``[tuning]`` on, ``--trials``
parameter sets per job), ``multi`` (each family's one model over every
symbol, ``[models] multi``). Each arm's folder under ``--out`` is a full
simulate report.

    .venv/bin/python scripts/study_models.py --config config.toml \\
        --data ../shared/data/market/*_USDT-1h.feather --families lgbm xgb \\
        --arms base context tuned multi --out study/
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.core.evaluation.significance import dsr_of_returns, sharpe_moments
from quantum_daemon.domain import config as config_module
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.multi_models import MULTI_FAMILIES
from quantum_daemon.simulate.report import VARIANT_RETURNS_FILE
from quantum_daemon.simulate.run import SimulateRequest, simulate
from quantum_daemon.storage.registry.registry import Registry

Arm = Callable[[Config, argparse.Namespace], Config]


def _base(cfg: Config, args: argparse.Namespace) -> Config:
    return cfg


def _context(cfg: Config, args: argparse.Namespace) -> Config:
    return config_module.with_keys(cfg, "features", context=True)


def _tuned(cfg: Config, args: argparse.Namespace) -> Config:
    return config_module.with_keys(
        cfg, "tuning", enabled=True, models=[], max_trials=args.trials, timeout_s=args.tune_s
    )


def _multi(cfg: Config, args: argparse.Namespace) -> Config:
    symbols = args.symbols or list(cfg.models.symbols)
    read = sorted(set(cfg.ingest.symbols) | set(symbols))  # a global model's symbols are ingested
    cfg = config_module.with_keys(cfg, "ingest", symbols=read)
    # evo_model and rl_sizer stay single-symbol (domain/multi_models.py)
    multi = {f: symbols for f in args.families if f in MULTI_FAMILIES}
    return config_module.with_keys(cfg, "models", multi=multi)


ARMS: dict[str, Arm] = {"base": _base, "context": _context, "tuned": _tuned, "multi": _multi}
SHOWN = ("loop", "newest_wins", "buy_and_hold")


@dataclass(frozen=True)
class ArmRun:
    name: str
    summary: Mapping[str, Any]
    returns: Mapping[str, np.ndarray]  # variant -> net return per bar
    trial_variants: tuple[str, ...]
    ledger_trials: int  # versions trained and tuning trials, every model of the arm
    seconds: float


def run_arm(name: str, cfg: Config, args: argparse.Namespace) -> ArmRun:
    out = args.out / name
    request = SimulateRequest(
        out=out,
        data=args.data,
        symbols=args.symbols,
        families=args.families,
        start=args.start,
        end=args.end,
        progress=False,
    )
    if args.reuse and (out / "summary.json").is_file():
        print(f"    reusing {out}", file=sys.stderr)
    elif (code := simulate(cfg, request)) != 0:
        raise SystemExit(f"arm {name}: simulate exited {code}")
    returns, trials = read_variant_returns(out / VARIANT_RETURNS_FILE)
    ledger = Registry(out / "registry").zoo_trials()
    summary = json.loads((out / "summary.json").read_text())
    run_info = json.loads((out / "run.json").read_text())  # the simulation's own wall time
    return ArmRun(name, summary, returns, trials, ledger, float(run_info["seconds"]))


def read_variant_returns(path: Path) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    series: dict[str, list[float]] = {}
    trials: list[str] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            name = row["variant"]
            if name not in series:
                series[name] = []
                if row["trial"] == "1":
                    trials.append(name)
            series[name].append(float(row["net"]))
    return {k: np.asarray(v) for k, v in series.items()}, tuple(trials)


def study_trials(runs: Sequence[ArmRun]) -> tuple[int, float]:
    """Every trial of the study and the Sharpe variance of the judged variants."""
    n = sum(len(r.trial_variants) + r.ledger_trials for r in runs)
    sharpes = [sharpe_moments(r.returns[v]).sharpe for r in runs for v in r.trial_variants]
    finite = [s for s in sharpes if math.isfinite(s)]
    return n, float(np.var(finite, ddof=1)) if len(finite) > 1 else 0.0


def table(runs: Sequence[ArmRun]) -> list[str]:
    n_trials, variance = study_trials(runs)
    lines = [
        f"trials counted: {n_trials} (variants judged in every arm + versions trained + "
        f"tuning trials); Sharpe variance of the variants {variance:.3g} (per bar)",
        "",
        "| arm | variant | total return | Sharpe | max drawdown | trades "
        "| DSR (run) | DSR (study) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        variants = run.summary["variants"]
        names = [v for v in SHOWN if v in variants] + sorted(
            v for v in variants if v.startswith(("family:", "newest:"))
        )
        for name in names:
            fig = variants[name]
            net = run.returns[name]
            moves = np.any(net != 0)
            dsr = dsr_of_returns(net, n_trials, variance or None) if moves else math.nan
            lines.append(
                f"| {run.name} | {name} | {_pct(fig['total_return'])} | {_num(fig['sharpe'])} | "
                f"{_pct(fig['max_drawdown'])} | {fig['trades']} | {_num(fig['dsr'], 4)} | "
                f"{_num(dsr, 4)} |"
            )
    lines += ["", "90% interval, out of sample (forecasts scored, coverage, mean pinball):", ""]
    for run in runs:
        per_family = run.summary.get("intervals") or {}
        cells = [
            f"{f} {v['n']} / {_num(v['coverage_90'], 3)} / {_num(v['pinball'], 5)}"
            for f, v in sorted(per_family.items())
        ]
        lines.append(f"- {run.name}: " + ("; ".join(cells) or "none"))
    lines.append("")
    for run in runs:
        models = run.summary["models"]
        trained = sum(m["trained"] for m in models.values())
        promoted = sum(m["promoted"] for m in models.values())
        lines.append(
            f"{run.name}: {trained} versions trained, {promoted} promoted, "
            f"{run.ledger_trials} ledger trials, {run.seconds:.0f} s wall"
        )
    return lines


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: Any, digits: int = 2) -> str:
    missing = x is None or (isinstance(x, float) and not math.isfinite(x))
    return "—" if missing else f"{x:.{digits}f}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--symbols", nargs="*", default=[])
    parser.add_argument("--families", nargs="+", default=["lgbm", "xgb"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--from", dest="start", default=None)
    parser.add_argument("--to", dest="end", default=None)
    parser.add_argument("--trials", type=int, default=10, help="tuned arm: parameter sets per job")
    parser.add_argument("--tune-s", type=float, default=120.0, help="tuned arm: search seconds")
    parser.add_argument("--out", type=Path, default=Path("study"))
    parser.add_argument(
        "--reuse", action="store_true", help="an arm whose folder has a summary.json is not rerun"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    base = config_module.load(args.config)
    runs = []
    for name in args.arms:
        print(f"==> arm {name}", file=sys.stderr, flush=True)
        runs.append(run_arm(name, ARMS[name](base, args), args))
    lines = table(runs)
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
