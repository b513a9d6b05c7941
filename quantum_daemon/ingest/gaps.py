"""Gap detection: a bar that arrives after missing bars of its series."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from quantum_daemon.store import Bar
from quantum_daemon.timeframes import TIMEFRAME_MS


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
    """Remembers the newest stored bar of each series and reports the gaps
    that newly stored bars open. Bars that fill an old gap report nothing."""

    def __init__(self, last_ts: Mapping[tuple[str, str], int] | None = None) -> None:
        self.last_ts: dict[tuple[str, str], int] = dict(last_ts or {})

    def observe(self, bars: Iterable[Bar]) -> list[Gap]:
        gaps: list[Gap] = []
        last_ts = self.last_ts
        for bar in bars:
            key = (bar.symbol, bar.tf)
            last = last_ts.get(key)
            if last is not None and bar.ts <= last:
                continue
            last_ts[key] = bar.ts
            step = TIMEFRAME_MS.get(bar.tf)
            if last is not None and step is not None and bar.ts - last > step:
                gap = Gap(
                    bar.symbol, bar.tf, last + step, bar.ts - step, (bar.ts - last) // step - 1
                )
                gaps.append(gap)
        return gaps
