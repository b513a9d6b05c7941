"""A sizer's account on one series, carried from bar to bar.

The live inference worker and ``simulate``'s sizing job both decide through
``next_decision``: the book held since the sizer's last decision is marked
to the bar's return when that decision was on the previous bar (a gap or a
fresh start begins flat), then the sizer chooses the bar's position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantum_daemon.domain.bars import Bars


@dataclass(frozen=True)
class SizerBook:
    """The book after a sizer's last decision on one series."""

    last_ts: int  # open time of the decision's bar
    position: float
    book: Any  # sizing_env.Book


def next_decision(
    sizer: Any,
    held: SizerBook | None,
    bars: Bars,
    i: int,
    signal: tuple[float, float, float],
    cost_rate: float,
) -> SizerBook:
    """The sizer's decision at bar ``i`` for ``signal`` = (mu, p_up, volatility)."""
    from quantum_daemon.models.sizing_env import Book

    book = Book() if held is None else held.book
    if held is not None and i > 0 and int(bars.ts[i - 1]) == held.last_ts:
        asset = float(bars.close[i] / bars.close[i - 1] - 1.0)
        book, _ = book.hold(held.position, asset, cost_rate)
    mu, p_up, vol = signal
    position = float(sizer.decide(book, mu, p_up, vol))
    return SizerBook(int(bars.ts[i]), position, book)
