"""Forecast intervals: split conformal on volatility-scaled residuals
(``core.conformal``), the calibrated wrapper's q05 / q50 / q95, and their
scores in the walk-forward report and the stored metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from sklearn.metrics import mean_pinball_loss

from quantum_daemon.core.conformal import (
    NOMINAL_COVERAGE,
    conformal_quantile,
    fit_conformal,
    interval_coverage,
    mean_pinball,
    pinball_loss,
    trailing_vol,
)
from quantum_daemon.core.evaluation.report import CALIBRATION_FILE
from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, walk_forward
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.timeframes import HOUR_MS
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.models.calibrated import calibrated_class
from quantum_daemon.models.families import calibrated_family, load_model
from quantum_daemon.training.offline import OfflineSpec, train_offline
from tests.conftest import make_bars

SMALL_XGB = {"num_boost_round": 30, "early_stopping_rounds": 10, "threads": 1}


def regime_bars(n: int, seed: int, quiet: float = 0.004, wild: float = 0.02) -> Bars:
    """1-bar log returns with volatility switching every 300 bars: regime
    ``(t // 300) % 2`` (1 wild) is that of the return *into* bar t."""
    rng = np.random.default_rng(seed)
    vol = np.where(regime_of(np.arange(n)) == 1, wild, quiet)
    close = 100.0 * np.exp(np.cumsum(vol * rng.standard_normal(n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    ts = 1_704_067_200_000 + np.arange(n, dtype=np.int64) * HOUR_MS
    high, low = np.maximum(open_, close) * 1.0005, np.minimum(open_, close) * 0.9995
    return Bars("REGIMEUSDT", "1h", ts, open_, high, low, close, np.ones(n))


def regime_of(t: np.ndarray) -> np.ndarray:
    return (np.asarray(t) // 300) % 2


class NoisyOracle:
    """Says the next return plus noise as big again (horizon 1 only): a
    forecaster with real but imperfect skill, fitted on nothing."""

    name: ClassVar[str] = "noisy_oracle"

    def fit(self, data: TrainSet) -> FitInfo:
        return FitInfo(best_iteration=1, val_loss=0.0)

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        # Reads its answer from a fixed pseudo-random stream keyed by the bar's
        # time, never from the bars after idx (it is given only bars up to idx).
        rng = np.random.default_rng(int(bars.ts[0] // HOUR_MS))
        noise = rng.standard_normal(len(bars)) * 0.01
        mu = noise[idx]
        return Forecast(mu=mu, p_up=np.full(len(idx), 0.5))

    def save(self, directory: Path) -> list[Path]:
        return []

    @classmethod
    def load(cls, directory: Path, meta: Any) -> NoisyOracle:
        return cls()

    def metadata(self) -> dict[str, Any]:
        return {}


def test_conformal_coverage_on_held_out_synthetic_data_is_within_two_points_of_nominal() -> None:
    rng = np.random.default_rng(20261208)
    n_cal, n_test = 4000, 40000
    mu = rng.normal(0.0, 0.01, n_cal + n_test)
    sigma = rng.uniform(0.005, 0.03, n_cal + n_test)
    outcome = mu + sigma * rng.standard_t(df=4, size=n_cal + n_test)  # fat tails
    cal, test = slice(0, n_cal), slice(n_cal, None)
    intervals = fit_conformal(mu[cal], outcome[cal], sigma[cal])
    q = intervals.quantiles(mu[test], sigma[test])
    coverage = interval_coverage(outcome[test], q[:, 0], q[:, 2])
    assert NOMINAL_COVERAGE == pytest.approx(0.9)
    assert abs(coverage - NOMINAL_COVERAGE) <= 0.02
    assert abs(np.mean(outcome[test] > q[:, 2]) - 0.05) <= 0.01  # each tail holds too
    assert abs(np.mean(outcome[test] <= q[:, 1]) - 0.5) <= 0.02
    assert intervals.n_cal == n_cal


def test_walk_forward_coverage_of_a_calibrated_family_is_within_two_points_of_nominal() -> None:
    bars = make_bars(12000, seed=11, vol=0.01)
    settings = EvaluationSettings(
        horizon=1, val_fraction=0.25, test_fraction=0.25, n_test_windows=1
    )
    report = walk_forward(calibrated_class(NoisyOracle), bars, settings).report
    assert report.quantiles is not None and report.quantiles.shape == (len(report.test_idx), 3)
    assert abs(report.coverage_90 - NOMINAL_COVERAGE) <= 0.02
    assert np.all(report.quantiles[:, 0] < report.quantiles[:, 2])
    expected = mean_pinball(report.outcome, report.quantiles)
    assert report.pinball == pytest.approx(expected) and report.pinball > 0


def test_volatility_scaling_holds_coverage_in_both_regimes_where_plain_residuals_do_not() -> None:
    bars = regime_bars(12000, seed=7)
    y = np.log(bars.close[1:] / bars.close[:-1])  # horizon 1: y[t] is the return into t + 1
    cal, test = np.arange(100, 6000), np.arange(6000, len(y))
    wild = regime_of(test + 1) == 1
    mu = np.zeros(len(bars))
    found = {}
    for scaled in (True, False):
        sigma = trailing_vol(bars.close, np.arange(len(bars)), 48, 1)
        sigma = sigma if scaled else np.ones(len(bars))
        intervals = fit_conformal(mu[cal], y[cal], sigma[cal], scaled=scaled)
        q = intervals.quantiles(mu[test], sigma[test])
        found[scaled] = [
            interval_coverage(y[test][m], q[m, 0], q[m, 2]) for m in (wild, ~wild)
        ]
    plain_wild, plain_quiet = found[False]
    scaled_wild, scaled_quiet = found[True]
    assert plain_wild < 0.83 and plain_quiet > 0.98  # one width: wrong in both regimes
    assert abs(scaled_wild - 0.9) < 0.04 and abs(scaled_quiet - 0.9) < 0.04
    assert abs(scaled_wild - scaled_quiet) < abs(plain_wild - plain_quiet) / 3


def test_conformal_quantile_uses_the_finite_sample_rank() -> None:
    scores = np.arange(1.0, 20.0)[::-1]  # 19 scores, unsorted
    assert conformal_quantile(scores, 0.95) == 19.0  # ceil(20 * 0.95) = 19th
    assert conformal_quantile(scores, 0.05) == 1.0  # floor(20 * 0.05) = 1st
    assert conformal_quantile(scores, 0.5) == 10.0
    assert conformal_quantile(np.arange(1.0, 10.0), 0.9) == 9.0  # ceil(10 * 0.9)
    assert conformal_quantile(np.arange(1.0, 100.0), 0.9) == 90.0
    with pytest.raises(ValueError, match="no calibration scores"):
        conformal_quantile(np.array([]), 0.9)


def test_pinball_loss_matches_the_reference_formula() -> None:
    rng = np.random.default_rng(3)
    y, q = rng.normal(size=500), rng.normal(size=500)
    for level in (0.05, 0.5, 0.95):
        loss = pinball_loss(y, q, level)
        reference = np.where(y >= q, level * (y - q), (1 - level) * (q - y))
        np.testing.assert_allclose(loss, reference)
        assert np.mean(loss) == pytest.approx(mean_pinball_loss(y, q, alpha=level))
    assert pinball_loss(np.array([1.0]), np.array([0.0]), 0.95)[0] == pytest.approx(0.95)
    assert pinball_loss(np.array([0.0]), np.array([1.0]), 0.95)[0] == pytest.approx(0.05)
    columns = np.column_stack([q - 1, q, q + 1])
    y_gap = np.concatenate([y[:-1], [np.nan]])  # an unknown outcome is left out
    by_level = [mean_pinball_loss(y[:-1], columns[:-1, k], alpha=a) for k, a in
                enumerate((0.05, 0.5, 0.95))]  # fmt: skip
    assert mean_pinball(y_gap, columns) == pytest.approx(np.mean(by_level))


def test_trailing_vol_reads_only_the_past() -> None:
    bars = make_bars(300, seed=2)
    idx = np.array([1, 2, 60, 299])
    vol = trailing_vol(bars.close, idx, 48, 4)
    returns = np.diff(np.log(bars.close))
    assert np.isnan(vol[0])  # one return only
    assert vol[1] == pytest.approx(np.std(returns[:2], ddof=1) * 2.0)
    assert vol[2] == pytest.approx(np.std(returns[12:60], ddof=1) * 2.0)
    changed = bars.close.copy()
    changed[61:] *= 1.5
    assert trailing_vol(changed, idx[:3], 48, 4)[2] == vol[2]


def test_a_calibrated_xgb_saves_and_loads_its_intervals(tmp_path: Path) -> None:
    bars = make_bars(1500, seed=5)
    data = TrainSet(bars, 4, np.arange(0, 1000), np.arange(1004, 1496), 0, SMALL_XGB)
    model = calibrated_family("xgb")()
    model.fit(data)
    model.save(tmp_path)
    meta = json.loads(json.dumps({"family": "xgb", "model": model.metadata()}))
    stored = meta["model"]["intervals"]
    assert stored["horizon"] == 4 and stored["n_cal"] == 492 and stored["scaled"] is True
    loaded = calibrated_family("xgb").load(tmp_path, meta)
    idx = np.arange(1100, 1499)
    before, after = model.predict(bars, idx), loaded.predict(bars, idx)
    for name in ("q05", "q50", "q95"):
        np.testing.assert_array_equal(getattr(before, name), getattr(after, name))
    assert before.q05 is not None and before.q95 is not None
    assert np.all(before.q05 < before.mu) and np.all(before.mu < before.q95)
    widths = before.q95 - before.q05
    vol = trailing_vol(bars.close, idx, stored["vol_window"], 4)
    np.testing.assert_allclose(widths / vol, widths[0] / vol[0])  # width follows the volatility
    del meta["model"]["intervals"]  # a version trained before intervals: none
    old = calibrated_family("xgb").load(tmp_path, meta)
    assert old.predict(bars, idx).q05 is None


def test_train_offline_stores_coverage_and_pinball(tmp_path: Path) -> None:
    bars = make_bars(1600, seed=6)
    spec = OfflineSpec(
        "xgb", bars, tmp_path / "data", params=SMALL_XGB, horizon=4, report_dir=tmp_path / "r"
    )
    result = train_offline(spec)
    _, meta = load_model(result.artifact_dir)
    metrics = meta["metrics"]
    assert 0.0 <= metrics["coverage_90"] <= 1.0 and metrics["pinball"] > 0.0
    assert metrics["coverage_90"] > 0.7  # a random walk: the intervals are not degenerate
    assert meta["fit"]["intervals_n_cal"] > 0
    report = json.loads((tmp_path / "r" / CALIBRATION_FILE).read_text())
    assert report["intervals"]["coverage_90"] == metrics["coverage_90"]
    assert report["intervals"]["n"] > 0
    assert all(w["intervals_n_cal"] > 0 for w in report["validation"])
