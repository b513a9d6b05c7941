"""The walk-forward evaluator, family-agnostic: what a family may see, the
report it produces, and the report folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from quantum_daemon.core.evaluation.performance import TRADING_KEYS, trading_metrics
from quantum_daemon.core.evaluation.report import JSON_KEYS, metrics_json
from quantum_daemon.core.evaluation.splits import walk_forward_folds
from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, split_plan, walk_forward
from quantum_daemon.core.features import horizon_log_return
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import EvaluationConfig
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.storage.report_files import write_report
from tests.conftest import make_bars

SETTINGS = EvaluationSettings(horizon=6, val_fraction=0.1, test_fraction=0.2, n_test_windows=3)


class MomentumFamily:
    """A real, tiny family: mu = b * (log return over the last h bars), b fitted
    by least squares on the training rows. It records what it was shown."""

    name: ClassVar[str] = "momentum"
    fit_bars: ClassVar[list[int]] = []
    predict_calls: ClassVar[list[tuple[int, int]]] = []
    sized: ClassVar[bool] = False

    def fit(self, data: TrainSet) -> FitInfo:
        MomentumFamily.fit_bars.append(len(data.bars))
        self.h = data.horizon
        x = self._signal(data.bars.close)[data.train_idx]
        y = horizon_log_return(data.bars.close, data.horizon)[data.train_idx]
        ok = ~np.isnan(x) & ~np.isnan(y)
        self.beta = float(np.dot(x[ok], y[ok]) / np.dot(x[ok], x[ok]))
        return FitInfo(best_iteration=1, val_loss=0.0)

    def _signal(self, close: np.ndarray) -> np.ndarray:
        out = np.full(close.shape, np.nan)
        out[self.h :] = np.log(close[self.h :] / close[: -self.h])
        return out

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        MomentumFamily.predict_calls.append((len(bars), int(idx[-1])))
        mu = self.beta * self._signal(bars.close)[idx]
        p_up = np.where(mu > 0, 0.7, 0.3)
        position = np.full(idx.shape, 0.5) if MomentumFamily.sized else None
        return Forecast(mu=mu, p_up=p_up, position=position)

    def save(self, directory: Path) -> list[Path]:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: Path, meta: Any) -> MomentumFamily:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        return {"beta": self.beta}


@pytest.fixture
def family() -> type[MomentumFamily]:
    MomentumFamily.fit_bars.clear()
    MomentumFamily.predict_calls.clear()
    MomentumFamily.sized = False
    return MomentumFamily


def test_fitting_and_predicting_never_see_the_bars_they_are_judged_on(
    family: type[MomentumFamily],
) -> None:
    bars = make_bars(2000, seed=1)
    walk_forward(family, bars, SETTINGS)
    folds = walk_forward_folds(split_plan(len(bars), SETTINGS))
    assert len(family.fit_bars) == len(folds) == 3
    for seen, fold in zip(family.fit_bars, folds, strict=True):
        assert seen <= fold.test_idx[0]  # not even the first test bar
    for (seen, last), fold in zip(family.predict_calls, folds, strict=True):
        assert last == fold.test_idx[-1] and seen == last + 1  # nothing after the window


def test_refit_once_uses_the_first_model_for_every_window(family: type[MomentumFamily]) -> None:
    bars = make_bars(2000, seed=1)
    settings = EvaluationSettings(**{**SETTINGS.__dict__, "refit_every_window": False})
    report = walk_forward(family, bars, settings).report
    assert len(family.fit_bars) == 1
    assert [o.refitted for o in report.folds] == [True, False, False]


def test_report_is_consistent_with_the_bars(family: type[MomentumFamily]) -> None:
    bars = make_bars(2000, seed=2)
    report = walk_forward(family, bars, SETTINGS).report
    idx = report.test_idx
    assert report.n_test_bars == idx.size == round(0.2 * 2000)
    np.testing.assert_array_equal(idx, np.arange(2000 - 1 - 400, 1999))
    np.testing.assert_array_equal(report.return_ts, bars.ts[idx + 1])
    np.testing.assert_array_equal(
        report.strategy.asset_returns, bars.close[idx + 1] / bars.close[idx] - 1
    )
    np.testing.assert_array_equal(report.outcome, horizon_log_return(bars.close, 6)[idx])
    expected = np.where(report.mu > 0, 1.0, np.where(report.mu < 0, -1.0, 0.0))
    np.testing.assert_array_equal(report.strategy.positions, expected)
    assert report.trading == trading_metrics(report.strategy, 8760)
    hold = report.baselines["buy_and_hold"]
    assert hold.positions.all() and report.baseline_metrics["flat"].exposure == 0.0


def test_a_family_that_sizes_positions_is_backtested_with_them(
    family: type[MomentumFamily],
) -> None:
    family.sized = True
    report = walk_forward(family, make_bars(2000, seed=3), SETTINGS).report
    assert np.all(report.strategy.positions == 0.5)
    assert report.trading.exposure == 1.0


def test_metrics_json_and_report_folder(family: type[MomentumFamily], tmp_path: Path) -> None:
    report = walk_forward(family, make_bars(2000, seed=4), SETTINGS).report
    metrics = metrics_json(report, "momentum_TESTUSDT_1h", "v20240101_000000", "momentum")
    assert tuple(metrics) == JSON_KEYS
    assert set(metrics["baselines"]) == {"buy_and_hold", "flat"}
    assert all(tuple(b) == TRADING_KEYS for b in metrics["baselines"].values())
    assert metrics["n_test_bars"] == report.n_test_bars
    paths = write_report(tmp_path / "rep", metrics, report)
    assert [p.name for p in paths] == ["metrics.json", "returns.csv", "equity.png"]
    assert json.loads(paths[0].read_text()) == metrics
    lines = paths[1].read_text().splitlines()
    assert lines[0] == "ts,strategy,buy_and_hold" and len(lines) == report.n_test_bars + 1
    table = np.loadtxt(paths[1], delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 0].astype(np.int64), report.return_ts)
    np.testing.assert_array_equal(table[:, 1], report.strategy.net)
    np.testing.assert_array_equal(table[:, 2], report.baselines["buy_and_hold"].net)
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_settings_from_config_with_overrides() -> None:
    config = EvaluationConfig(horizon=12, fee_bps=4.0, n_trials=7)
    settings = EvaluationSettings.from_config(config, horizon=3)
    assert (settings.horizon, settings.fee_bps, settings.n_trials) == (3, 4.0, 7)
    assert settings.position_threshold == 0.05 and settings.refit_every_window


def test_settings_are_the_config_and_a_zero_trial_variance_means_not_known() -> None:
    assert EvaluationSettings() == EvaluationSettings.from_config(EvaluationConfig())
    assert EvaluationSettings().known_trial_variance is None  # the DSR's null 1 / (n - 1)
    known = EvaluationSettings.from_config(EvaluationConfig(trial_sharpe_variance=0.02))
    assert known.known_trial_variance == 0.02
