"""The xgb and lgbm families: determinism, artifacts, causality, and the
three behaviours that make an evaluator trustworthy: no edge where there is
none, an edge where there is one, and none once the target is shuffled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantum_daemon.core.evaluation.backtest import position_from_forecast
from quantum_daemon.core.evaluation.significance import SIGNIFICANT
from quantum_daemon.core.evaluation.walkforward import (
    EvaluationReport,
    EvaluationSettings,
    walk_forward,
)
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.timeframes import DAY_MS, HOUR_MS
from quantum_daemon.models.base import TrainSet
from quantum_daemon.models.families import family_class
from quantum_daemon.models.trees import Fitted, TreeData, TreeFamily
from tests.conftest import make_bars

FAMILIES = ("xgb", "lgbm")
YEAR_1H = 8760
SETTINGS = EvaluationSettings()  # the defaults: horizon 24, 12 bps per unit traded


def planted_bars(n: int, seed: int, amplitude: float = 0.002, vol: float = 0.01) -> Bars:
    """1h bars whose log returns carry a weekly drift, amplitude * sin(2 pi * week
    fraction of the bar), on top of iid noise. The drift is a function of the
    calendar, which the features show at every decision (hour and day of week
    of the close): predictable from the past, without reading the future."""
    rng = np.random.default_rng(seed)
    ts = 1_704_067_200_000 + np.arange(n, dtype=np.int64) * HOUR_MS
    week_fraction = ((ts // DAY_MS + 3) % 7 + (ts % DAY_MS) / DAY_MS) / 7
    log_ret = amplitude * np.sin(2 * np.pi * week_fraction) + vol * rng.standard_normal(n)
    close = 100.0 * np.exp(np.cumsum(log_ret))
    open_ = np.concatenate([[100.0], close[:-1]])
    spread = np.abs(rng.standard_normal(n)) * vol * 0.5
    high, low = np.maximum(open_, close) * (1 + spread), np.minimum(open_, close) * (1 - spread)
    return Bars("PLANTUSDT", "1h", ts, open_, high, low, close, rng.lognormal(3.0, 0.5, n))


def train_set(bars: Bars, seed: int = 0, horizon: int = 24, **params: Any) -> TrainSet:
    n = len(bars)
    val_start = int(n * 0.8)
    return TrainSet(
        bars=bars,
        horizon=horizon,
        train_idx=np.arange(0, val_start - horizon),
        val_idx=np.arange(val_start, n - horizon),
        seed=seed,
        params=params,
    )


def fitted(name: str, bars: Bars, seed: int = 0) -> TreeFamily:
    model = family_class(name)()
    model.fit(train_set(bars, seed))
    assert isinstance(model, TreeFamily)
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_same_seed_same_predictions_other_seed_other_model(name: str) -> None:
    bars = planted_bars(3000, seed=1)
    idx = np.arange(2000, 2999)
    first, again = fitted(name, bars, seed=7), fitted(name, bars, seed=7)
    other = fitted(name, bars, seed=8)
    np.testing.assert_array_equal(first.predict(bars, idx).mu, again.predict(bars, idx).mu)
    assert not np.array_equal(first.predict(bars, idx).mu, other.predict(bars, idx).mu)


@pytest.mark.parametrize(("name", "magic"), [("xgb", b"{"), ("lgbm", b"tree")])
def test_save_and_load_give_identical_predictions(name: str, magic: bytes, tmp_path: Path) -> None:
    bars = planted_bars(3000, seed=2)
    model = fitted(name, bars)
    [path] = model.save(tmp_path)
    assert path.read_bytes().startswith(magic)  # UBJSON object / LightGBM text model
    loaded = family_class(name).load(tmp_path, {"model": model.metadata()})
    idx = np.arange(100, 2999)
    before, after = model.predict(bars, idx), loaded.predict(bars, idx)
    np.testing.assert_array_equal(before.mu, after.mu)
    np.testing.assert_array_equal(before.p_up, after.p_up)


@pytest.mark.parametrize("name", FAMILIES)
def test_early_stopping_records_the_best_iteration(name: str) -> None:
    model = family_class(name)()
    noise = model.fit(train_set(make_bars(3000, seed=3)))
    signal = family_class(name)().fit(train_set(planted_bars(3000, seed=3)))
    assert 1 <= noise.best_iteration < 400  # stopped early on noise
    assert signal.best_iteration > noise.best_iteration  # kept learning the planted drift
    assert noise.extra["n_train"] > 0 and noise.extra["residual_sigma"] > 0
    assert model.metadata()["n_trees"] == noise.best_iteration


def test_unknown_hyper_parameter_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown XGBParams keys"):
        family_class("xgb")().fit(train_set(make_bars(1000), max_dept=3))


@pytest.mark.parametrize("name", FAMILIES)
def test_appending_future_bars_never_changes_predictions_or_positions(name: str) -> None:
    """Fit once; forecast decisions before n from bars[:n] and from bars[:n + k]
    with two different futures: mu, p_up and positions are identical."""
    n = 3000
    history = planted_bars(n + 500, seed=4)
    model = fitted(name, history.slice(0, 2500))
    idx = np.arange(150, n)
    futures = [history, planted_bars(n + 500, seed=4, amplitude=-0.05, vol=0.2)]
    futures[1] = _join(history.slice(0, n), futures[1].slice(n, n + 500))
    base = model.predict(history.slice(0, n), idx)
    for bars in futures:
        got = model.predict(bars, idx)
        np.testing.assert_array_equal(got.mu, base.mu)
        np.testing.assert_array_equal(got.p_up, base.p_up)
        np.testing.assert_array_equal(
            position_from_forecast(got.mu, got.p_up), position_from_forecast(base.mu, base.p_up)
        )


def _join(head: Bars, tail: Bars) -> Bars:
    parts = [
        np.concatenate([getattr(head, k), getattr(tail, k)])
        for k in ("ts", "open", "high", "low", "close", "volume")
    ]
    return Bars(head.symbol, head.tf, *parts)


def test_no_edge_on_random_walks() -> None:
    """20 random walks of a year of 1h bars, both families, default settings:
    the test-window DSR is significant (> 0.95) in at most 5% of the runs."""
    dsr = [
        walk_forward(
            family_class(name), make_bars(YEAR_1H, seed=100 + seed), SETTINGS, seed
        ).report.dsr
        for seed in range(20)
        for name in FAMILIES
    ]
    assert len(dsr) == 40
    assert np.mean(np.array(dsr) > SIGNIFICANT) <= 0.05


def _shuffled(name: str) -> type[TreeFamily]:
    """The family trained on a permuted target (train and validation)."""
    base = family_class(name)
    assert issubclass(base, TreeFamily)

    class Shuffled(base):  # type: ignore[valid-type, misc]
        def _train(self, params: Any, seed: int, rows: TreeData, listener: Any = None) -> Fitted:
            rng = np.random.default_rng(seed)
            permuted = TreeData(
                rows.x_train, rng.permutation(rows.y_train), rows.x_val, rng.permutation(rows.y_val)
            )
            return super()._train(params, seed, permuted, listener)

    return Shuffled


PLANTED_RUNS = [(name, seed) for name in FAMILIES for seed in (0, 1)]


@pytest.fixture(scope="module")
def planted_reports() -> dict[tuple[str, int], EvaluationReport]:
    return {
        (name, seed): walk_forward(
            family_class(name), planted_bars(YEAR_1H, seed), SETTINGS, seed
        ).report
        for name, seed in PLANTED_RUNS
    }


@pytest.mark.parametrize(("name", "seed"), PLANTED_RUNS)
def test_planted_edge_is_found_after_costs(
    name: str, seed: int, planted_reports: dict[tuple[str, int], EvaluationReport]
) -> None:
    report = planted_reports[(name, seed)]
    assert report.trading.sharpe > 1.0 and report.trading.total_return > 0
    assert report.dsr > SIGNIFICANT
    assert report.trading.sharpe > report.baseline_metrics["buy_and_hold"].sharpe


@pytest.mark.parametrize(("name", "seed"), PLANTED_RUNS)
def test_shuffled_target_breaks_the_edge(
    name: str, seed: int, planted_reports: dict[tuple[str, int], EvaluationReport]
) -> None:
    bars = planted_bars(YEAR_1H, seed)
    shuffled = walk_forward(_shuffled(name), bars, SETTINGS, seed).report
    assert shuffled.dsr <= SIGNIFICANT
    assert shuffled.trading.sharpe < planted_reports[(name, seed)].trading.sharpe / 2


def test_daemon_side_modules_never_import_model_libraries() -> None:
    code = (
        "import sys\n"
        "import quantum_daemon.core.features, quantum_daemon.storage.artifacts\n"
        "import quantum_daemon.training.offline\n"
        "import quantum_daemon.core.evaluation.walkforward, quantum_daemon.core.evaluation.report\n"
        "import quantum_daemon.models.families, quantum_daemon.commands.train\n"
        "libs = ('xgboost', 'lightgbm', 'torch', 'matplotlib')\n"
        "heavy = sorted(m for m in libs if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
