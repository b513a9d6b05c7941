"""What a simulation runs on: the bars of its series, checked before any work.

Bars come from files (CSV, Freqtrade JSON / feather / parquet, as ``replay``
reads them) or from the bar store. Every series must share one timeframe and
hold enough history before the simulated span for the first training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.timeframes import timeframe_ms


class SimulationInputError(ValueError):
    """Bad input for a simulation: the message says what and how to fix it."""


@dataclass(frozen=True)
class SimulationSeries:
    """One series with the index of its first simulated bar."""

    bars: Bars
    start: int  # first bar index of the simulated span
    stop: int  # one past the last simulated bar

    @property
    def key(self) -> tuple[str, str]:
        return (self.bars.symbol, self.bars.tf)


def parse_date(text: str) -> int:
    """An ISO date or date-time (UTC) as epoch ms."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise SimulationInputError(f"not a date: {text!r} (expected e.g. 2024-03-01)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def bars_from_files(paths: Sequence[Path], symbol: str | None, tf: str | None) -> list[Bars]:
    """One ``Bars`` per file; two files of one series are refused."""
    from quantum_daemon.storage.bar_files import BarFileError, read_bar_file

    out: dict[tuple[str, str], Bars] = {}
    for path in paths:
        try:
            bar_file = read_bar_file(path, symbol, tf)
        except BarFileError as exc:
            raise SimulationInputError(str(exc)) from None
        frame = bar_file.frame.sort_values("ts", kind="stable")
        _check_repeats(frame, path)
        frame = frame.drop_duplicates("ts")
        bars = Bars.from_frame(frame.reset_index(drop=True), bar_file.symbol, bar_file.tf)
        key = (bars.symbol, bars.tf)
        if key in out:
            raise SimulationInputError(
                f"two files hold {bars.symbol} {bars.tf}: pass one file per series"
            )
        out[key] = bars
    return list(out.values())


def _check_repeats(frame: Any, path: Path) -> None:
    """A bar time repeated with other prices is two series in one file (or a
    corrupt file); an exact repeat is harmless and dropped."""
    repeats = frame[frame.duplicated("ts", keep=False)]
    if len(repeats) and len(repeats.drop_duplicates()) > repeats["ts"].nunique():
        raise SimulationInputError(
            f"{path}: bar times repeat with different prices (several symbols in one file?): "
            "pass one file per series"
        )


def plan_series(
    all_bars: Sequence[Bars],
    history_bars: int,
    start_ms: int | None,
    end_ms: int | None,
) -> list[SimulationSeries]:
    """Check the series and place the simulated span ``[start_ms, end_ms)``
    in each; without ``start_ms`` the span starts once ``history_bars`` are there."""
    if not all_bars:
        raise SimulationInputError("no bars: pass --data FILE... or fill the bar store first")
    tfs = sorted({b.tf for b in all_bars})
    if len(tfs) != 1:
        raise SimulationInputError(f"series of several timeframes {tfs}: simulate one at a time")
    return [_place(b, history_bars, start_ms, end_ms) for b in all_bars]


def _place(
    bars: Bars, history_bars: int, start_ms: int | None, end_ms: int | None
) -> SimulationSeries:
    name = f"{bars.symbol} {bars.tf}"
    if len(bars) == 0:
        raise SimulationInputError(f"{name}: no bars")
    start = history_bars if start_ms is None else int(np.searchsorted(bars.ts, start_ms))
    stop = len(bars) if end_ms is None else int(np.searchsorted(bars.ts, end_ms))
    if stop <= start:
        raise SimulationInputError(f"{name}: no bars in the simulated range")
    if start < history_bars:
        have = start
        raise SimulationInputError(
            f"{name}: {have} bars before the simulated span, the first training needs "
            f"[training] history_bars = {history_bars}; start later (--from) or lower it"
        )
    _check_gaps(bars, history_bars, name)
    return SimulationSeries(bars, start, stop)


def _check_gaps(bars: Bars, history_bars: int, name: str) -> None:
    """A gap longer than the training window leaves a model nothing to learn from."""
    step = timeframe_ms(bars.tf)
    missing = np.diff(bars.ts) // step - 1
    worst = int(missing.max()) if missing.size else 0
    if worst >= history_bars:
        at = int(bars.ts[int(np.argmax(missing))])
        when = datetime.fromtimestamp(at / 1000, UTC).isoformat()
        raise SimulationInputError(
            f"{name}: a gap of {worst} missing bars after {when}, longer than the "
            f"training window ({history_bars} bars)"
        )
