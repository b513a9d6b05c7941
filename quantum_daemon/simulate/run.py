"""One simulation from the command line's arguments to the report folder:
inputs checked, the executor started, progress shown, Ctrl-C honoured."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from quantum_daemon.domain.config import FAMILIES, Config
from quantum_daemon.domain.errors import EX_INTERRUPTED, EX_OK, EX_USAGE
from quantum_daemon.simulate.engine import Simulation
from quantum_daemon.simulate.inputs import (
    SimulationInputError,
    bars_from_files,
    parse_date,
    plan_series,
)
from quantum_daemon.simulate.report import write_report
from quantum_daemon.simulate.variants import evaluate, family_of, policies, summarize


@dataclass(frozen=True)
class SimulateRequest:
    out: Path
    data: Sequence[Path] = ()
    symbols: Sequence[str] = ()
    families: Sequence[str] = ()
    tf: str | None = None
    start: str | None = None
    end: str | None = None
    progress: bool | None = None  # None: a bar on a terminal, JSON lines otherwise
    seed_live: bool = False  # write the records, signals and trials into storage.data_dir


def check_families(cfg: Config, asked: Sequence[str]) -> list[str]:
    families = list(asked) or list(cfg.models.families)
    for family in families:
        if family not in FAMILIES:
            raise SimulationInputError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return families


def load_bars(cfg: Config, request: SimulateRequest) -> list[Any]:
    if request.data:
        symbol = (
            request.symbols[0] if len(request.symbols) == 1 and len(request.data) == 1 else None
        )
        bars = bars_from_files(request.data, symbol, request.tf)
        if request.symbols:
            bars = [b for b in bars if b.symbol in request.symbols]
        return bars
    return [_store(cfg).read_bars(s, _tf(cfg, request)) for s in _symbols(cfg, request)]


def reference_bars(cfg: Config, request: SimulateRequest) -> list[Any]:
    """Context features' reference series that are not simulated themselves
    (``--symbols`` left them out): read from the same files or store."""
    if not cfg.features.context or (request.data and not request.symbols):
        return []  # off, or every file is simulated
    wanted = [s for s in cfg.features.reference_symbols if s not in _symbols(cfg, request)]
    if not wanted:
        return []
    if request.data:
        bars = bars_from_files(request.data, None, request.tf)
        return [b for b in bars if b.symbol in wanted]
    return [_store(cfg).read_bars(s, _tf(cfg, request)) for s in wanted]


def _symbols(cfg: Config, request: SimulateRequest) -> list[str]:
    return list(request.symbols) or list(cfg.models.symbols)


def _tf(cfg: Config, request: SimulateRequest) -> str:
    return request.tf or cfg.models.timeframes[0]


def _store(cfg: Config) -> Any:
    from quantum_daemon.storage.bar_store import BarStore

    return BarStore(cfg.storage.data_dir / "bars.sqlite3")


def simulate(cfg: Config, request: SimulateRequest, err: TextIO = sys.stderr) -> int:
    try:
        families = check_families(cfg, request.families)
        start = parse_date(request.start) if request.start else None
        end = parse_date(request.end) if request.end else None
        series = plan_series(load_bars(cfg, request), cfg.training.history_bars, start, end)
        reference = reference_bars(cfg, request)
    except SimulationInputError as exc:
        print(f"quantum-daemon simulate: {exc}", file=err)
        return EX_USAGE
    return asyncio.run(_simulate(cfg, request, series, families, err, reference))


async def _simulate(
    cfg: Config,
    request: SimulateRequest,
    series: Sequence[Any],
    families: list[str],
    err: TextIO,
    reference: Sequence[Any] = (),
) -> int:
    from quantum_daemon.lifecycle.service import make_executor

    out = request.out
    data_dir = out / "registry"
    if data_dir.exists():
        shutil.rmtree(data_dir)  # a fresh registry: versions of an earlier run would be reused
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    tty = err.isatty() if request.progress is None else request.progress
    executor = make_executor(cfg)
    async with executor:
        sim = Simulation(
            cfg, series, families, data_dir, executor, Progress(err, tty, started),
            reference=reference,
        )  # fmt: skip
        await sim.run(stop)
    seconds = time.monotonic() - started
    # a family only a global model runs has its "family:" variant too
    run_families = list(dict.fromkeys([*families, *(k.family for k in sim.keys)]))
    policy_map = policies(run_families, cfg.evaluation.position_threshold, _newest(sim))
    results = evaluate({k[0]: v for k, v in sim.bars.items()}, policy_map, sim.cost_rate)
    summary = summarize(results, sim.tf, cfg.evaluation.trial_sharpe_variance)
    run_info = {
        "seconds": round(seconds, 3),
        "versions": sim.jobs_done,
        "failed": sim.jobs_failed,
        "training_seconds": {f: round(s, 3) for f, s in sorted(sim.job_seconds.items())},
    }
    document = write_report(out, sim, results, summary, run_info)
    if tty:
        err.write("\n")
    print_table(document, err)
    print(f"report: {out / 'report.html'}", file=err)
    if request.seed_live and not sim.partial:
        from quantum_daemon.simulate.seed import seed_live

        seeded = seed_live(sim, cfg.storage.data_dir, int(summary["n_trials"]))
        print(seeded.describe(cfg.storage.data_dir), file=err)
    return EX_INTERRUPTED if sim.partial else EX_OK


def _newest(sim: Simulation) -> Any:
    """Per bar: every model's newest trained version's forecast (``newest_wins``)."""

    def members(record: Any) -> list[tuple[str, Any]]:
        out = []
        for model_id, version in sorted(record.newest.items()):
            rec = sim.record_of(model_id, version, record.symbol)
            symbol_bars = sim.series[(rec.symbol, sim.tf)].bars
            i = int(symbol_bars.ts.searchsorted(record.ts))
            p = rec.predictions.get(i)
            if p is not None and p.mu == p.mu and family_of(model_id) != "rl_sizer":
                out.append((model_id, p))
        return out

    return members


def print_table(document: dict[str, Any], out: TextIO) -> None:
    cols = ("total_return", "sharpe", "max_drawdown", "dsr", "trades")
    print(f"{'variant':34}" + "".join(f"{c:>14}" for c in cols), file=out)
    for name, v in document["variants"].items():
        cells = "".join(
            f"{v[c]:>14.4f}" if isinstance(v[c], float) else f"{v[c]!s:>14}" for c in cols
        )
        print(f"{name:34}{cells}", file=out)


class Progress:
    """A progress line on a terminal; one JSON line per 5% otherwise."""

    def __init__(self, out: TextIO, tty: bool, started: float) -> None:
        self.out, self.tty, self.started = out, tty, started
        self.last_step = -1

    def __call__(self, info: dict[str, Any]) -> None:
        done, total = info["done"], info["total"]
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (total - done) if done else 0.0
        from datetime import UTC, datetime

        day = datetime.fromtimestamp(info["ts"] / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        versions = info.get("versions", 0)
        if self.tty:
            width = 30
            filled = int(width * done / total)
            self.out.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {day} {done}/{total} bars "
                f"{versions} versions  {elapsed:5.0f}s elapsed  ETA {eta:5.0f}s"
            )
            self.out.flush()
            return
        step = int(20 * done / total)
        if step != self.last_step:
            self.last_step = step
            line = {
                "event": "simulate.progress",
                "simulated": day,
                "bars": done,
                "of": total,
                "versions": versions,
                "elapsed_s": round(elapsed, 1),
                "eta_s": round(eta, 1),
            }
            print(json.dumps(line), file=self.out, flush=True)
