"""``quantum-daemon simulate``: the loop replayed over history (docs/simulate.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "simulate",
        help="replay the continuous-learning loop over history and report what it earned",
    )
    parser.add_argument("--from", dest="start", help="first simulated bar (date, UTC)")
    parser.add_argument("--to", dest="end", help="end of the simulated span (date, UTC)")
    parser.add_argument("--symbols", nargs="+", default=[], help="symbols (default: config)")
    parser.add_argument("--tf", help="timeframe (default: from the files, else the config's)")
    parser.add_argument("--families", nargs="+", default=[], help="families (default: config)")
    parser.add_argument(
        "--data",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="bar files (CSV, Freqtrade JSON / feather); default: the bar store",
    )
    parser.add_argument("--out", type=Path, default=Path("simulation"), help="report folder")
    parser.add_argument(
        "--seed-live",
        action="store_true",
        help="write the models' records, the signal history and the trials into storage.data_dir",
    )
    parser.set_defaults(func=simulate)


def simulate(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import load_config
    from quantum_daemon.simulate.run import SimulateRequest
    from quantum_daemon.simulate.run import simulate as run_simulation

    cfg = load_config(args)
    request = SimulateRequest(
        out=args.out,
        data=args.data,
        symbols=args.symbols,
        families=args.families,
        tf=args.tf,
        start=args.start,
        end=args.end,
        seed_live=args.seed_live,
    )
    return run_simulation(cfg, request)
