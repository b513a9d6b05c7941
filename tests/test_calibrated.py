"""The calibrated wrapper: p_up calibrated on the validation window only, the
test-window ECE, save / load, and the wiring into train (JSON keys unchanged,
calibration.json in the report folder, ece in the stored metrics)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from quantum_daemon.core.calibration import Calibrator
from quantum_daemon.core.evaluation.report import CALIBRATION_FILE, JSON_KEYS
from quantum_daemon.core.evaluation.splits import walk_forward_folds
from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, split_plan, walk_forward
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.timeframes import HOUR_MS
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.models.calibrated import (
    Calibrated,
    calibrated_class,
    realized_up,
    wrap,
)
from quantum_daemon.models.families import calibrated_family, load_model
from quantum_daemon.training.offline import OfflineSpec, train_offline
from tests.conftest import make_bars

SETTINGS = EvaluationSettings(
    horizon=1, val_fraction=0.25, test_fraction=0.25, n_test_windows=1, position_threshold=0.0
)
SMALL_XGB = {"num_boost_round": 40, "early_stopping_rounds": 10, "threads": 1}


def known_odds_bars(n: int, seed: int) -> Bars:
    """Bars whose volume at t is the true probability q[t] that the next close
    is higher (horizon 1): known at the close of t, realized one bar later."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.15, 0.85, n)
    up = np.concatenate([[True], rng.uniform(size=n - 1) < q[:-1]])
    log_ret = np.where(up, 1.0, -1.0) * rng.uniform(0.001, 0.01, n)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    ts = 1_704_067_200_000 + np.arange(n, dtype=np.int64) * HOUR_MS
    high, low = np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999
    return Bars("ODDSUSDT", "1h", ts, open_, high, low, close, q)


class Overconfident:
    """Reads the true q[t] and says sigmoid(3 logit q): monotone in the truth,
    but far too sure."""

    name: ClassVar[str] = "overconfident"

    def fit(self, data: TrainSet) -> FitInfo:
        assert "calibration" not in data.params  # the wrapper's key stays with the wrapper
        return FitInfo(best_iteration=1, val_loss=0.0)

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        q = bars.volume[idx]
        p_up = 1.0 / (1.0 + np.exp(-3.0 * np.log(q / (1.0 - q))))
        return Forecast(mu=p_up - 0.5, p_up=p_up)

    def save(self, directory: Path) -> list[Path]:
        path = directory / "overconfident.json"
        path.write_text("{}")
        return [path]

    @classmethod
    def load(cls, directory: Path, meta: Any) -> Overconfident:
        assert "calibration" not in meta["model"]
        return cls()

    def metadata(self) -> dict[str, Any]:
        return {"kind": "overconfident"}


def first_fold_train_set(bars: Bars, **params: Any) -> TrainSet:
    """The first fold's train set, but with *all* the bars (test window included)."""
    fold = walk_forward_folds(split_plan(len(bars), SETTINGS))[0]
    return TrainSet(bars, SETTINGS.horizon, fold.train_idx, fold.val_idx, 0, params)


def test_realized_up_is_the_sign_of_the_horizon_log_return() -> None:
    close = np.array([1.0, 2.0, 1.5, 1.5, 3.0])
    up = realized_up(close, np.array([0, 1, 2, 3, 4]), 1)
    np.testing.assert_array_equal(up[:4], [1.0, 0.0, 0.0, 1.0])
    assert np.isnan(up[4])


def test_calibration_lowers_the_test_window_ece_of_an_overconfident_family() -> None:
    bars = known_odds_bars(8000, seed=1)  # 2000 test decisions: ECE noise about 0.02
    raw = walk_forward(Overconfident, bars, SETTINGS).report
    calibrated = walk_forward(calibrated_class(Overconfident), bars, SETTINGS)
    report = calibrated.report
    assert raw.ece > 0.1
    assert report.ece < 0.06 and report.ece < raw.ece / 2
    np.testing.assert_array_equal(report.mu, raw.mu)  # mu untouched
    assert isinstance(calibrated.model, Calibrated)
    assert calibrated.model.name == "overconfident"
    assert calibrated.model.calibrator.method == "platt"
    assert calibrated.model.calibrator.slope == pytest.approx(1 / 3, abs=0.1)
    extra = report.folds[0].fit.extra
    assert extra["calibration_val_ece"] < extra["calibration_val_ece_raw"]


def test_isotonic_through_the_calibration_hyper_parameter() -> None:
    bars = known_odds_bars(8000, seed=2)
    report = walk_forward(
        calibrated_class(Overconfident), bars, SETTINGS, params={"calibration": "isotonic"}
    ).report
    assert report.ece < 0.06
    assert report.folds[0].fit.extra["calibration_method"] == "isotonic"
    with pytest.raises(ValueError, match="unknown calibration method"):
        wrap(Overconfident()).fit(first_fold_train_set(bars, calibration="magic"))


def test_the_calibrator_depends_on_the_validation_window_only() -> None:
    bars = known_odds_bars(4000, seed=3)
    data = first_fold_train_set(bars)
    last_target = int(data.val_idx[-1]) + data.horizon
    changed = changed_after(bars, last_target + 1, seed=99)
    first = wrap(Overconfident())
    first.fit(data)
    again = wrap(Overconfident())
    again.fit(first_fold_train_set(changed))
    assert again.calibrator == first.calibrator and again.report == first.report
    # Not vacuous: moving the last validation target changes the calibrator.
    moved = wrap(Overconfident())
    moved.fit(first_fold_train_set(changed_after(bars, last_target - 200, seed=99)))
    assert moved.calibrator != first.calibrator


def changed_after(bars: Bars, start: int, seed: int) -> Bars:
    """``bars`` up to ``start`` (excluded), another market from there on."""
    other = known_odds_bars(len(bars), seed)
    scale = bars.close[start - 1] / other.close[start - 1]
    columns = []
    for mine, theirs in (
        (bars.open, other.open * scale),
        (bars.high, other.high * scale),
        (bars.low, other.low * scale),
        (bars.close, other.close * scale),
        (bars.volume, other.volume),
    ):
        columns.append(np.concatenate([mine[:start], theirs[start:]]))
    return Bars(bars.symbol, bars.tf, bars.ts, *columns)


def test_a_calibrated_xgb_saves_and_loads_to_identical_predictions(tmp_path: Path) -> None:
    bars = make_bars(1500, seed=5)
    data = TrainSet(bars, 4, np.arange(0, 1000), np.arange(1004, 1496), 0, SMALL_XGB)
    model = calibrated_family("xgb")()
    model.fit(data)
    assert isinstance(model, Calibrated) and model.name == "xgb"
    # On a random walk the fitted slope may be <= 0 (then no calibration is
    # applied); persistence is what this test is about, so pin a real map.
    model.calibrator = Calibrator("platt", slope=0.7, intercept=0.1)
    files = model.save(tmp_path)
    assert [f.name for f in files] == ["model.ubj"]  # the calibrator lives in the metadata
    meta = json.loads(json.dumps({"family": "xgb", "model": model.metadata()}))
    assert meta["model"]["calibration"]["calibrator"]["method"] == "platt"
    loaded = calibrated_family("xgb").load(tmp_path, meta)
    idx = np.arange(1100, 1499)
    before, after = model.predict(bars, idx), loaded.predict(bars, idx)
    np.testing.assert_array_equal(before.p_up, after.p_up)
    np.testing.assert_array_equal(before.mu, after.mu)
    assert isinstance(loaded, Calibrated)
    assert "xgboost" in loaded.library_versions()  # what the wrapper lacks is the inner's
    assert not hasattr(loaded, "decide")
    copied = pickle.loads(pickle.dumps(loaded))
    np.testing.assert_array_equal(copied.predict(bars, idx).p_up, before.p_up)
    del meta["model"]["calibration"]  # a version trained before calibration: the identity
    old = calibrated_family("xgb").load(tmp_path, meta)
    np.testing.assert_array_equal(old.predict(bars, idx).p_up, model.inner.predict(bars, idx).p_up)


def test_train_offline_stores_ece_and_writes_calibration_json(tmp_path: Path) -> None:
    bars = make_bars(1600, seed=6)
    result = train_offline(
        OfflineSpec(
            "xgb", bars, tmp_path / "data", params=SMALL_XGB, horizon=4, report_dir=tmp_path / "r"
        )
    )
    assert tuple(result.metrics) == JSON_KEYS  # --json and metrics.json stay exact
    assert [p.name for p in result.report_files][-1] == CALIBRATION_FILE
    report = json.loads((tmp_path / "r" / CALIBRATION_FILE).read_text())
    assert 0.0 <= report["test"]["ece"] <= 1.0
    assert sum(b["count"] for b in report["test"]["reliability"]) == report["test"]["n"] > 0
    assert [w["window"] for w in report["validation"]] == [0, 1, 2]
    assert {"val_ece_raw", "val_ece", "method", "n_val"} <= set(report["validation"][-1])
    model, meta = load_model(result.artifact_dir)
    assert isinstance(model, Calibrated) and model.name == "xgb"
    assert meta["metrics"]["ece"] == report["test"]["ece"]
    assert meta["model"]["calibration"]["val_ece"] == report["validation"][-1]["val_ece"]
    assert meta["params"] == model.inner.metadata()["params"]


def test_train_cli_json_keys_unchanged_and_report_has_calibration(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    csv = tmp_path / "SYN_USDT-1h.csv"
    make_bars(1600, seed=7).to_frame().to_csv(csv, index=False)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantum_daemon",
            "--config",
            str(tmp_path / "config.toml"),
            "train",
            "--family",
            "xgb",
            "--data",
            str(csv),
            "--horizon",
            "4",
            "--report",
            str(tmp_path / "rep"),
            "--json",
            *(f"--param={k}={v}" for k, v in SMALL_XGB.items()),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert tuple(json.loads(done.stdout)) == JSON_KEYS
    assert "ece" in json.loads((tmp_path / "rep" / CALIBRATION_FILE).read_text())["test"]
