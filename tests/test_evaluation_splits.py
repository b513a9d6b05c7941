"""Walk-forward splits: time order, embargo, consecutive test windows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_daemon.core.evaluation.splits import InsufficientData, SplitPlan, walk_forward_folds


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(400, 20_000),
    horizon=st.integers(1, 48),
    val=st.floats(0.05, 0.3),
    test=st.floats(0.05, 0.3),
    windows=st.integers(1, 6),
)
def test_folds_respect_time_order_and_embargo(
    n: int, horizon: int, val: float, test: float, windows: int
) -> None:
    plan = SplitPlan(n, horizon, val, test, windows)
    try:
        folds = walk_forward_folds(plan)
    except InsufficientData:
        return
    assert len(folds) == windows
    for fold in folds:
        # Every training target ends before validation starts; every
        # validation target ends before the test window's first decision.
        assert fold.train_idx[-1] + horizon < fold.val_idx[0]
        assert fold.val_idx[-1] + horizon < fold.test_idx[0]
        assert fold.fit_end <= fold.test_idx[0]
        assert fold.val_idx.size == plan.n_val
        for part in (fold.train_idx, fold.val_idx, fold.test_idx):
            assert np.all(np.diff(part) == 1)
    tests = np.concatenate([f.test_idx for f in folds])
    np.testing.assert_array_equal(tests, np.arange(n - 1 - plan.n_test, n - 1))
    train_sizes = [f.train_idx.size for f in folds]
    assert train_sizes == sorted(train_sizes)  # expanding


def test_a_concrete_layout() -> None:
    """1,000 bars, horizon 10, 10% validation, 20% test in two windows."""
    (first, second) = walk_forward_folds(SplitPlan(1000, 10, 0.1, 0.2, 2))
    assert (first.test_idx[0], first.test_idx[-1]) == (799, 898)
    assert (second.test_idx[0], second.test_idx[-1]) == (899, 998)  # bar 999 pays the last
    assert (first.val_idx[0], first.val_idx[-1]) == (689, 788)
    assert (first.train_idx[0], first.train_idx[-1]) == (0, 678)
    assert (second.train_idx[-1], second.val_idx[0]) == (778, 789)


def test_too_few_bars_say_how_many_are_needed() -> None:
    with pytest.raises(InsufficientData, match="need at least"):
        walk_forward_folds(SplitPlan(120, 24, 0.15, 0.15, 3))
