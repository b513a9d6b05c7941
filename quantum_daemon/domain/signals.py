"""The ensemble signals the daemon published, as arrays: ``rl_sizer``'s
training signal (``storage.recorded_signals`` reads them back from Redis).

``RecordedSignals`` is frozen numpy arrays sorted by ``ts``, one entry per
bar: where a bar was published twice (a replay, a restart), the later entry
wins. numpy only: the worker side (``models``, ``training``) and the daemon
both import this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class RecordedSignals:
    """Per recorded bar, in ``ts`` order without repeats: ``mu`` and ``p_up``.
    ``skipped`` counts the stream entries that could not be read."""

    ts: np.ndarray
    mu: np.ndarray
    p_up: np.ndarray
    skipped: int = 0

    def __post_init__(self) -> None:
        n = self.ts.shape[0]
        if any(a.shape != (n,) for a in (self.ts, self.mu, self.p_up)):
            raise ValueError("ts, mu and p_up need one value per recorded bar")
        if n > 1 and not np.all(np.diff(self.ts) > 0):
            raise ValueError("ts must be strictly increasing; use from_rows")

    @classmethod
    def empty(cls, skipped: int = 0) -> RecordedSignals:
        return cls(np.empty(0, np.int64), np.empty(0), np.empty(0), skipped)

    @classmethod
    def from_rows(cls, rows: list[tuple[int, float, float]], skipped: int = 0) -> RecordedSignals:
        """From (ts, mu, p_up) rows in stream order: sorted by ``ts``, keeping
        the last row of each ``ts``."""
        if not rows:
            return cls.empty(skipped)
        ts = np.array([r[0] for r in rows], dtype=np.int64)
        values = np.array([(r[1], r[2]) for r in rows], dtype=np.float64)
        order = np.argsort(ts, kind="stable")
        ts, values = ts[order], values[order]
        last_of_ts = np.append(ts[1:] != ts[:-1], True)
        return cls(ts[last_of_ts], values[last_of_ts, 0], values[last_of_ts, 1], skipped)

    def merged_after(self, earlier: list[tuple[int, float, float]]) -> RecordedSignals:
        """``earlier`` rows (ts, mu, p_up) with these signals; where both have
        a bar, these win."""
        mine = [
            (int(t), float(m), float(p))
            for t, m, p in zip(self.ts, self.mu, self.p_up, strict=True)
        ]
        return RecordedSignals.from_rows([*earlier, *mine], self.skipped)

    def until(self, last_ts: int | None) -> RecordedSignals:
        """The signals of bars up to ``last_ts`` (none for None): what a job
        whose last bar opened at ``last_ts`` may see."""
        if last_ts is None:
            return RecordedSignals.empty(self.skipped)
        keep = self.ts <= last_ts
        return RecordedSignals(self.ts[keep], self.mu[keep], self.p_up[keep], self.skipped)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def positions(self, bar_ts: np.ndarray) -> np.ndarray:
        """For each bar open time, the index of its recorded signal, or -1."""
        bar_ts = np.asarray(bar_ts, dtype=np.int64)
        at = np.searchsorted(self.ts, bar_ts)
        inside = at < len(self)
        found = np.zeros(bar_ts.shape, dtype=bool)
        found[inside] = self.ts[at[inside]] == bar_ts[inside]
        return np.where(found, at, -1)

    def recorded_fraction(self, bar_ts: np.ndarray) -> float:
        """The share of these bars that have a recorded signal (0.0 for no bars)."""
        if np.asarray(bar_ts).size == 0:
            return 0.0
        return float(np.mean(self.positions(bar_ts) >= 0))
