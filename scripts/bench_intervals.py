"""Benchmark: what forecast intervals cost at predict time.

One calibrated xgb version fitted on the last 2,105 BTC/USDT 1h bars of
../shared/data/market (horizon 24), then, in the same process, the median of
``--repeats`` alternating timings of (a) the wrapper's ``predict`` over the inference
window (512 context bars + 1 new bar: the live case) and over the last 1,000
bars (a catch-up), with intervals, and (b) the same without them (the
intervals set aside: the baseline). Prints both, the difference and the ratio.

    .venv/bin/python scripts/bench_intervals.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.forecasting import TrainSet
from quantum_daemon.models.calibrated import Calibrated
from quantum_daemon.models.families import calibrated_family
from quantum_daemon.models.intervals import with_quantiles
from quantum_daemon.storage.bar_files import read_bar_file

MARKET = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"
HORIZON = 24


def load() -> Bars:
    file = read_bar_file(MARKET / "BTC_USDT-1h.feather")
    bars = Bars.from_frame(file.frame, file.symbol, file.tf)
    return bars.slice(len(bars) - 2105, None)


def fitted(bars: Bars) -> Calibrated:
    model = calibrated_family("xgb")()
    assert isinstance(model, Calibrated)
    n = len(bars)
    train, val = np.arange(0, int(n * 0.7)), np.arange(int(n * 0.7) + HORIZON, n - HORIZON)
    model.fit(TrainSet(bars, HORIZON, train, val, 0, {"threads": 1}))
    return model


def medians_s(model: Calibrated, bars: Bars, idx: np.ndarray, repeats: int) -> tuple[float, float]:
    """(with, without) intervals: alternating runs, so that both see the same machine."""
    intervals = model.intervals
    times: dict[bool, list[float]] = {True: [], False: []}
    model.predict(bars, idx)  # warm-up
    for n in range(repeats):
        for on in (True, False) if n % 2 else (False, True):
            model.intervals = intervals if on else None
            started = time.perf_counter()
            model.predict(bars, idx)
            times[on].append(time.perf_counter() - started)
    model.intervals = intervals
    return statistics.median(times[True]), statistics.median(times[False])


def quantiles_s(model: Calibrated, bars: Bars, idx: np.ndarray, repeats: int) -> float:
    """Median time of adding the quantiles to a forecast already made."""
    forecast = model.inner.predict(bars, idx)
    horizon = model.horizon or HORIZON
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with_quantiles(forecast, model.intervals, bars, idx, horizon)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    bars = load()
    model = fitted(bars)
    cases = {
        "live (513 bars, 1 predicted)": (bars.slice(len(bars) - 513, None), np.array([512])),
        "catch-up (1000 predicted)": (bars, np.arange(len(bars) - 1000, len(bars))),
    }
    print(f"{'case':32} {'with (ms)':>10} {'without (ms)':>13} {'extra (ms)':>11} {'ratio':>6}")
    for label, (window, idx) in cases.items():
        with_s, without_s = medians_s(model, window, idx, args.repeats)
        print(
            f"{label:32} {with_s * 1e3:10.3f} {without_s * 1e3:13.3f} "
            f"{(with_s - without_s) * 1e3:11.3f} {with_s / without_s:6.3f}"
        )
        alone_s = quantiles_s(model, window, idx, args.repeats)
        print(f"{'  of which with_quantiles alone':32} {alone_s * 1e3:10.3f}")


if __name__ == "__main__":
    main()
