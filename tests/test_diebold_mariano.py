"""The Diebold–Mariano test against statsmodels' HAC variance of a mean."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantum_daemon.core.evaluation.diebold_mariano import (
    diebold_mariano,
    newey_west_variance,
    overlap_lags,
    paired,
)

sm = pytest.importorskip("statsmodels.api")
norm = pytest.importorskip("scipy.stats").norm


def overlapping_losses(
    seed: int, n: int, horizon: int, edge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Brier-like losses of two forecasters of an overlapping h-bar outcome:
    the differential is an MA(h-1) plus an edge."""
    rng = np.random.default_rng(seed)
    shocks = rng.normal(size=n + horizon)
    common = np.convolve(shocks, np.ones(horizon) / horizon, mode="valid")[:n]
    incumbent = 0.25 + 0.05 * common + 0.02 * rng.normal(size=n)
    challenger = (
        incumbent
        - edge
        + 0.03
        * np.convolve(rng.normal(size=n + horizon), np.ones(horizon) / horizon, mode="valid")[:n]
    )
    return incumbent, challenger


@pytest.mark.parametrize(
    ("seed", "n", "horizon"), [(1, 300, 24), (2, 1000, 24), (3, 200, 1), (4, 57, 8)]
)
def test_the_statistic_matches_statsmodels_hac_to_1e9(seed: int, n: int, horizon: int) -> None:
    incumbent, challenger = overlapping_losses(seed, n, horizon, edge=0.004)
    lags = overlap_lags(horizon, is_position=False)
    ours = diebold_mariano(incumbent, challenger, lags)
    d = incumbent - challenger
    fit = sm.OLS(d, np.ones((n, 1))).fit(
        cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": False}
    )
    reference = float(fit.params[0] / fit.bse[0])
    assert ours.statistic == pytest.approx(reference, rel=1e-9, abs=1e-9)
    assert ours.long_run_variance / n == pytest.approx(float(fit.bse[0]) ** 2, rel=1e-9)
    assert ours.p_value == pytest.approx(float(norm.sf(reference)), rel=1e-9, abs=1e-12)


def test_overlap_widens_the_variance_so_a_noisy_edge_is_not_significant() -> None:
    """With a 24-bar horizon the lag-0 variance understates the mean's error:
    the HAC statistic is smaller than the naive one on the same data."""
    incumbent, challenger = overlapping_losses(7, 400, 24, edge=0.002)
    naive = diebold_mariano(incumbent, challenger, lags=0)
    hac = diebold_mariano(incumbent, challenger, lags=23)
    assert abs(hac.statistic) < abs(naive.statistic)


def test_a_real_edge_is_rejected_and_no_edge_is_not() -> None:
    incumbent, challenger = overlapping_losses(11, 2000, 24, edge=0.02)
    assert diebold_mariano(incumbent, challenger, 23).rejects(0.05)
    # the same data the other way round: the challenger is worse
    assert not diebold_mariano(challenger, incumbent, 23).rejects(0.05)
    rejected = sum(
        diebold_mariano(*overlapping_losses(seed, 500, 1, edge=0.0), 0).rejects(0.05)
        for seed in range(200)
    )
    assert rejected <= 20  # about 5% of 200 under the null; 20 is far in the tail


def test_degenerate_differentials() -> None:
    same = np.full(10, 0.2)
    assert not diebold_mariano(same, same, 3).rejects(0.05)
    assert diebold_mariano(same, same - 0.1, 3).rejects(0.05)  # always better, no variance
    assert not diebold_mariano(same, same + 0.1, 3).rejects(0.05)
    empty = diebold_mariano(np.array([]), np.array([]), 3)
    assert empty.n == 0 and not empty.rejects(1.0)
    assert math.isnan(newey_west_variance(np.array([]), 2))
    with pytest.raises(ValueError):
        diebold_mariano(np.ones(3), np.ones(4), 0)


def test_paired_keeps_common_bars_in_order() -> None:
    a, b = paired({3: 0.3, 1: 0.1, 2: 0.2}, {2: 0.5, 3: 0.6, 9: 0.9})
    assert a.tolist() == [0.2, 0.3] and b.tolist() == [0.5, 0.6]
