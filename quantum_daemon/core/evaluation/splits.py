"""Walk-forward splits in time order, with an embargo of ``horizon`` bars.

Indices are decision indices: ``t`` means "at the close of bar t". A decision
in a test window earns the next bar's return, so the test decisions are the
last ``round(test_fraction * n)`` decisions that have a next bar, cut into
``n_windows`` consecutive windows. For each window starting at decision ``s``:

    train: [first, s - 2h - n_val)   val: [s - h - n_val, s - h)   test: [s, end)

A training target ``log(close[t+h] / close[t])`` therefore ends before the
first validation decision, and a validation target before the first test
decision: no label overlaps the window after it. Training grows with each
window (expanding); validation keeps its length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_TRAIN_DECISIONS = 50


class InsufficientData(ValueError):
    """Too few bars for the requested windows; the message says how many are needed."""


@dataclass(frozen=True)
class Fold:
    """One walk-forward step: fit on ``train_idx`` (early stopping on
    ``val_idx``), then judge on ``test_idx``. All are increasing decision indices."""

    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    horizon: int

    @property
    def fit_end(self) -> int:
        """One past the last bar that fitting may read: the last validation target's bar."""
        return int(self.val_idx[-1]) + self.horizon + 1


@dataclass(frozen=True)
class SplitPlan:
    n_bars: int
    horizon: int
    val_fraction: float
    test_fraction: float
    n_windows: int
    first: int = 0

    @property
    def n_val(self) -> int:
        return max(1, round(self.val_fraction * self.n_bars))

    @property
    def n_test(self) -> int:
        return max(self.n_windows, round(self.test_fraction * self.n_bars))

    @property
    def test_start(self) -> int:
        return self.n_bars - 1 - self.n_test


def walk_forward_folds(plan: SplitPlan) -> tuple[Fold, ...]:
    """The folds of ``plan``, oldest test window first. Raises ``InsufficientData``."""
    _check_size(plan)
    test_idx = np.arange(plan.test_start, plan.n_bars - 1)
    return tuple(_fold(plan, window) for window in np.array_split(test_idx, plan.n_windows))


def _fold(plan: SplitPlan, test_idx: np.ndarray) -> Fold:
    start, h = int(test_idx[0]), plan.horizon
    val_start = start - h - plan.n_val
    return Fold(
        train_idx=np.arange(plan.first, val_start - h),
        val_idx=np.arange(val_start, start - h),
        test_idx=test_idx,
        horizon=h,
    )


def _check_size(plan: SplitPlan) -> None:
    train_end = plan.test_start - 2 * plan.horizon - plan.n_val
    if train_end - plan.first < MIN_TRAIN_DECISIONS:
        needed = plan.n_bars + MIN_TRAIN_DECISIONS - (train_end - plan.first)
        raise InsufficientData(
            f"{plan.n_bars} bars leave {max(0, train_end - plan.first)} training decisions "
            f"(horizon {plan.horizon}, validation {plan.n_val}, test {plan.n_test}); "
            f"need at least {MIN_TRAIN_DECISIONS}, i.e. about {needed} bars"
        )
