"""The demo's bars: the bundled history published at once, then a held-out
tail one bar per series at a time, as a live feed would publish them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import redis

from quantum_daemon.domain.keys import Keys
from quantum_daemon.ingest.replay import publish_frame
from quantum_daemon.storage.bar_files import read_bar_file

BAR_SUFFIXES = (".csv", ".feather", ".json", ".parquet")


@dataclass(frozen=True)
class SeriesBars:
    """One series' bars, split into the history and the held-out tail."""

    symbol: str
    tf: str
    history: pd.DataFrame
    tail: pd.DataFrame

    @property
    def name(self) -> str:
        return f"{self.symbol}:{self.tf}"


def bar_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in BAR_SUFFIXES)


def split_series(paths: Sequence[Path], tail: int) -> list[SeriesBars]:
    """Each file's bars, the newest ``tail`` held out (at most all but one bar)."""
    series = []
    for path in paths:
        bars = read_bar_file(path)
        cut = max(1, len(bars.frame) - tail)
        frame = bars.frame.reset_index(drop=True)
        series.append(SeriesBars(bars.symbol, bars.tf, frame.iloc[:cut], frame.iloc[cut:]))
    return series


def publish_history(client: redis.Redis, keys: Keys, series: Sequence[SeriesBars]) -> int:
    """Every series' history onto its bar stream at once; returns the bars published."""
    return sum(publish_frame(client, keys.bars(s.symbol, s.tf), s.history) for s in series)


@dataclass
class TailFeed:
    """Publishes the tails one step at a time: the next bar of every series."""

    client: redis.Redis
    keys: Keys
    series: Sequence[SeriesBars]
    published: int = 0
    _step: int = field(default=0, init=False)

    @property
    def steps(self) -> int:
        return max((len(s.tail) for s in self.series), default=0)

    @property
    def done(self) -> bool:
        return self._step >= self.steps

    @property
    def step(self) -> int:
        return self._step

    def publish_next(self) -> int:
        """XADD the next tail bar of each series; returns the bars published."""
        count = 0
        for s in self.series:
            if self._step < len(s.tail):
                row = s.tail.iloc[self._step : self._step + 1]
                count += publish_frame(self.client, self.keys.bars(s.symbol, s.tf), row)
        self._step += 1
        self.published += count
        return count
