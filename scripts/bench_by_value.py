"""Benchmark: what a training job by value (``training.by_value``, the Ray
backend's way) costs beside the same job writing its version folder itself.

On the last 2,105 BTC/USDT 1h bars of ../shared/data/market (the daemon's
``training.history_bars``), each family in ``--families`` runs ``run_job``
twice per repeat, in this process, with the same spec and seed:

- baseline: ``run_job`` writes into a data dir (the local pool's way);
- by value: ``pack_job`` (the active version read in: the second job of a
  model has one), a pickle round trip of the packed job (what Ray sends),
  ``run_by_value`` in a temporary folder, a pickle round trip of the shipped
  version, and ``receive_version`` (checks, staging folder, fsync, rename).

It prints the median seconds of both, their ratio, the median extra seconds
of the by-value steps alone (pack, pickles, read back, receive), and the
bytes that travel each way.

    .venv/bin/python scripts/bench_by_value.py [--repeats 3] [--families xgb,lgbm]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from quantum_daemon.domain.bars import Bars
from quantum_daemon.storage.bar_files import read_bar_file
from quantum_daemon.training.by_value import pack_job, receive_version, run_by_value
from quantum_daemon.training.jobs import ActiveRef, TrainJobResult, TrainJobSpec, run_job

MARKET = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"
LIMIT = 64 * 2**20
HISTORY = 2105


def load_bars() -> Bars:
    path = next(p for p in sorted(MARKET.glob("BTC*1h*")) if p.is_file())
    file = read_bar_file(path, "BTCUSDT", "1h")
    bars = Bars.from_frame(file.frame, file.symbol, file.tf)
    return bars.slice(len(bars) - HISTORY, None)


def spec_for(
    family: str, bars: Bars, data_dir: Path, day: int, active: ActiveRef | None
) -> TrainJobSpec:
    return TrainJobSpec(
        job_id=f"{family}-{day}", family=family, bars=bars, data_dir=str(data_dir),
        version_time=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=day), active=active,
    )  # fmt: skip


def by_value(spec: TrainJobSpec, data_dir: Path) -> tuple[TrainJobResult, float, int, int]:
    """The job by value; (result, seconds outside run_job, bytes out, bytes back)."""
    extra = time.perf_counter()
    packed = pickle.dumps(pack_job(run_job, spec, LIMIT))
    job = pickle.loads(packed)
    extra = time.perf_counter() - extra
    shipped_at = time.perf_counter()
    shipped = run_by_value(job)
    train_s = shipped.result.seconds
    back = pickle.dumps(shipped)
    result = receive_version(data_dir, pickle.loads(back), LIMIT)
    extra += time.perf_counter() - shipped_at - train_s
    return result, extra, len(packed), len(back)


def bench(family: str, bars: Bars, repeats: int) -> dict[str, float]:
    direct_s, value_s, extra_s, out_b, back_b = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        local, remote = Path(tmp) / "local", Path(tmp) / "remote"
        first = run_job(spec_for(family, bars, local, 0, None))  # warm-up, and the active version
        packed = pack_job(run_job, spec_for(family, bars, remote, 0, None), LIMIT)
        active = receive_version(remote, run_by_value(packed), LIMIT)
        for n in range(1, repeats + 1):
            start = time.perf_counter()
            run_job(spec_for(family, bars, local, n, ActiveRef(first.version, first.artifact_dir)))
            direct_s.append(time.perf_counter() - start)
            spec = spec_for(family, bars, remote, n, ActiveRef(active.version, active.artifact_dir))
            start = time.perf_counter()
            _, extra, out, back = by_value(spec, remote)
            value_s.append(time.perf_counter() - start)
            extra_s.append(extra)
            out_b.append(out)
            back_b.append(back)
    return {
        "direct_s": statistics.median(direct_s),
        "by_value_s": statistics.median(value_s),
        "extra_s": statistics.median(extra_s),
        "bytes_out": statistics.median(out_b),
        "bytes_back": statistics.median(back_b),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--families", default="xgb,lgbm")
    args = parser.parse_args()
    bars = load_bars()
    print(f"{len(bars)} BTC/USDT 1h bars, median of {args.repeats} (after a warm-up)")
    print(f"{'family':10} {'direct s':>9} {'by value s':>11} {'ratio':>6} {'extra s':>8} "
          f"{'KiB out':>8} {'KiB back':>9}")  # fmt: skip
    for family in args.families.split(","):
        r = bench(family, bars, args.repeats)
        print(
            f"{family:10} {r['direct_s']:9.3f} {r['by_value_s']:11.3f} "
            f"{r['by_value_s'] / r['direct_s']:6.2f} {r['extra_s']:8.4f} "
            f"{r['bytes_out'] / 1024:8.0f} {r['bytes_back'] / 1024:9.0f}"
        )


if __name__ == "__main__":
    main()
