"""Trust weights as of a bar: the trust rounds the daemon applied, in order.

Trust weights are shared by every series, and a bar may be answered after
rounds on later bars were applied: a catch-up after a restart or a backlog,
or one series' backlog answered and scored before another's. Pooling such a
bar with the current weights would use outcomes from after its close. A bar
is pooled with the weights as of its close instead: the weights after the
longest run of rounds, in the order they were applied, whose round times
(``round_ts``, the close of the settling bar) are all at or before the bar's
close. When rounds are applied in time order, that is the latest round with
``round_ts`` <= the close; a round applied later for an older time (another
series' backlog) only counts for bars closing at or after every round before
it, so a bar never sees a later round.

Before the first round the timeline holds, the weights are uniform over the
families that answered (an empty weight set, as ``ensemble.combine`` aligns
it): causal, where the oldest known weights would come from a later round.
The same applies to bars older than what the timeline keeps (``MAX_ROUNDS``
in memory; after a restart, the rounds that ``quantum:trust:history`` still
holds whole, back to the last change of the live families).

Pure, no I/O: the service appends each applied round and cuts what a request
needs (``for_request``); ``PredictRequest.bar_weights`` picks each bar's
entry, the same in the worker and in the service.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from quantum_daemon.inference.messages import WeightsAt, WeightSet

MAX_ROUNDS = 10_000  # weight sets kept in memory: 1,000 bars of catch-up for 10 series
UNIFORM: WeightSet = ()


@dataclass
class WeightTimeline:
    """Weight sets by the first bar close they apply to, ascending; the first
    entry is the uniform set, from time 0."""

    max_rounds: int = MAX_ROUNDS
    starts: list[int] = field(default_factory=lambda: [0])
    sets: list[WeightSet] = field(default_factory=lambda: [UNIFORM])

    def append(self, round_ts: int, weights: Mapping[str, float]) -> None:
        """The weights after a round just applied at ``round_ts``: they apply
        to bars closing at or after every round time seen so far."""
        entry = tuple(weights.items())
        if entry == self.sets[-1]:
            return
        start = max(round_ts, self.starts[-1])
        if start == self.starts[-1] and len(self.sets) > 1:
            self.sets[-1] = entry
            return
        self.starts.append(start)
        self.sets.append(entry)
        if len(self.sets) > self.max_rounds + 1:  # the oldest go; their bars become uniform
            del self.starts[1], self.sets[1]

    @property
    def newest(self) -> WeightSet:
        return self.sets[-1]

    def at(self, close_ts: int) -> WeightSet:
        """The weights as of a bar closing at ``close_ts``."""
        return self.sets[bisect_right(self.starts, close_ts) - 1]

    def for_request(
        self, after_ts: int | None, step: int, current: Mapping[str, float]
    ) -> WeightsAt:
        """The entries that the bars after ``after_ts`` (open time; None: any
        bar) can select, given that bars close on the grid of ``step``; empty
        when every one of them selects the newest entry and it is ``current``
        (the live case: nothing more goes on the pipe)."""
        lowest = 0 if after_ts is None else after_ts + 1 + step  # earliest close of a new bar
        first = bisect_right(self.starts, lowest) - 1
        chosen: list[tuple[int, WeightSet]] = []
        for k in range(first, len(self.starts)):
            close = _grid_ceil(max(self.starts[k], lowest), step)
            if k + 1 == len(self.starts) or close < self.starts[k + 1]:
                chosen.append((self.starts[k], self.sets[k]))
        if len(chosen) == 1 and dict(chosen[0][1]) == dict(current):
            return ()
        return tuple(chosen)


def _grid_ceil(ts: int, step: int) -> int:
    """The first multiple of ``step`` at or after ``ts``."""
    return -(-ts // step) * step


def rounds_in_history(
    history: Mapping[str, Sequence[tuple[int, float]]], weights: Mapping[str, float]
) -> list[tuple[int, dict[str, float]]]:
    """The rounds, oldest first, that ``quantum:trust:history`` still holds
    whole for the live families (those in ``weights``). A round writes one
    entry to every live family, so the k-th entry from the end of each list
    is the same round, as long as they agree on its time and sum to one;
    that stops at a change of the live set (a newcomer has no older entry,
    a family that left held part of the mass) or where a list was trimmed."""
    families = list(weights)
    if not families:
        return []
    depth = min(len(history.get(f, ())) for f in families)
    rounds: list[tuple[int, dict[str, float]]] = []
    for k in range(1, depth + 1):
        entries = [history[f][-k] for f in families]
        times = {ts for ts, _ in entries}
        if len(times) != 1 or not math.isclose(math.fsum(w for _, w in entries), 1.0, abs_tol=1e-9):
            break
        rounds.append((times.pop(), {f: w for f, (_, w) in zip(families, entries, strict=True)}))
    return rounds[::-1]
