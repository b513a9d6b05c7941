"""Gap detection: a bar that arrives after missing bars of its series."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter

from quantum_daemon.domain.timeframes import TIMEFRAME_MS
from quantum_daemon.storage.bar_store import Bar

_SERIES = itemgetter(0, 1)  # (symbol, tf) of a Bar


@dataclass(frozen=True)
class Gap:
    """Bars ``first_missing_ts`` .. ``last_missing_ts`` (open times) of a
    series never arrived before the bar at ``last_missing_ts + tf``."""

    symbol: str
    tf: str
    first_missing_ts: int
    last_missing_ts: int
    missing: int


class GapTracker:
    """Remembers the newest stored bar of each series and reports the bars
    missing between it and the newer bars of each stored batch. Bars older
    than the newest (filling an old gap) report nothing."""

    def __init__(self, last_ts: Mapping[tuple[str, str], int] | None = None) -> None:
        self.last_ts: dict[tuple[str, str], int] = dict(last_ts or {})

    def observe(self, bars: Iterable[Bar]) -> list[Gap]:
        """The gaps that the newly stored ``bars`` open (each bar once)."""
        gaps: list[Gap] = []
        for (symbol, tf), run in groupby(bars, key=_SERIES):
            gaps.extend(self._observe_series(symbol, tf, [bar[2] for bar in run]))
        return gaps

    def _observe_series(self, symbol: str, tf: str, stamps: list[int]) -> list[Gap]:
        last = self.last_ts.get((symbol, tf))
        low, high = min(stamps), max(stamps)
        if last is not None and high <= last:
            return []
        self.last_ts[(symbol, tf)] = high
        step = TIMEFRAME_MS.get(tf)
        if step is None:
            return []
        contiguous = high - low == (len(stamps) - 1) * step  # distinct stamps fill [low, high]
        if contiguous and (last is None or low <= last + step):
            return []  # the common case, without a loop over the bars
        return _gaps(symbol, tf, step, last, stamps)


def _gaps(symbol: str, tf: str, step: int, last: int | None, stamps: list[int]) -> list[Gap]:
    newer = sorted(ts for ts in stamps if last is None or ts > last)
    previous = newer[0] if last is None else last
    gaps = []
    for ts in newer:
        if ts - previous > step:
            gaps.append(Gap(symbol, tf, previous + step, ts - step, (ts - previous) // step - 1))
        previous = ts
    return gaps
