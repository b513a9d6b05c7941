"""evo_model: a CMA-ES-evolved rule finds a planted edge, deterministically,
and survives save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, walk_forward
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.models.base import TrainSet
from quantum_daemon.models.evo import DEFAULT_FEATURES, EvoFamily, EvoParams

SMALL = {"max_evaluations": 400, "patience": 10}


def momentum_bars(n: int, phi: float = 0.3, seed: int = 0) -> Bars:
    """Bars whose one-bar log return follows r[t+1] = phi r[t] + noise: the
    previous bar's return (feature ``ret_1``) predicts the next one."""
    rng = np.random.default_rng(seed)
    r = np.zeros(n)
    noise = rng.normal(0, 0.01, n)
    for t in range(1, n):
        r[t] = phi * r[t - 1] + noise[t]
    close = 100 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[100.0], close[:-1]])
    wick = np.abs(rng.normal(0, 0.002, n))
    ts = 1_704_067_200_000 + np.arange(n, dtype=np.int64) * timeframe_ms("1h")
    return Bars(
        "TESTUSDT", "1h", ts, open_, np.maximum(open_, close) * (1 + wick),
        np.minimum(open_, close) * (1 - wick), close, rng.lognormal(3, 0.5, n),
    )  # fmt: skip


def train_set(bars: Bars, seed: int = 0, **params: object) -> TrainSet:
    n = len(bars)
    return TrainSet(
        bars=bars,
        horizon=4,
        train_idx=np.arange(100, int(0.7 * n)),
        val_idx=np.arange(int(0.7 * n) + 8, n - 5),
        seed=seed,
        params=SMALL | params,
    )


def test_finds_the_planted_rule() -> None:
    bars = momentum_bars(1500)
    model = EvoFamily()
    info = model.fit(train_set(bars))
    rule = model.metadata()["rule"]
    weights = dict(zip(rule["features"], rule["weights"], strict=True))
    assert weights["ret_1"] > 0
    assert abs(weights["ret_1"]) == max(abs(w) for w in weights.values())
    assert info.extra["val_sharpe"] > 0.05  # per bar, after costs, on the validation window
    assert info.val_loss == -info.extra["val_sharpe"]
    assert info.extra["evaluations"] <= SMALL["max_evaluations"] + 20  # one generation over at most


def test_out_of_sample_through_the_walk_forward_evaluator() -> None:
    bars = momentum_bars(1500, seed=1)
    settings = EvaluationSettings(horizon=4, n_test_windows=2)
    report = walk_forward(EvoFamily, bars, settings, seed=0, params=SMALL).report
    assert report.trading.sharpe > 1.0  # annualized, after costs, on unseen bars
    assert report.trading.trades > 10


def test_positions_and_forecasts_agree_with_the_table() -> None:
    bars = momentum_bars(800)
    model = EvoFamily()
    model.fit(train_set(bars))
    idx = np.arange(100, 790)
    forecast = model.predict(bars, idx)
    assert forecast.position is not None
    assert set(np.unique(forecast.position)) <= {-1.0, 0.0, 1.0}
    table = model.metadata()["rule"]
    for held, slot in ((-1.0, 0), (0.0, 1), (1.0, 2)):
        at = forecast.position == held
        assert np.all(forecast.p_up[at] == table["p_up_by_position"][slot])
        assert np.all(forecast.mu[at] == table["mu_by_position"][slot])
    assert np.all((forecast.p_up > 0) & (forecast.p_up < 1))


def test_flat_inside_the_feature_warm_up() -> None:
    bars = momentum_bars(800)
    model = EvoFamily()
    model.fit(train_set(bars))
    early = model.predict(bars, np.arange(0, 20))
    assert early.position is not None and np.all(early.position == 0.0)


def test_deterministic_with_a_seed() -> None:
    bars = momentum_bars(900)
    first, second, other = EvoFamily(), EvoFamily(), EvoFamily()
    first.fit(train_set(bars, seed=7))
    second.fit(train_set(bars, seed=7))
    other.fit(train_set(bars, seed=8))
    assert first.metadata()["rule"] == second.metadata()["rule"]
    assert first.metadata()["rule"] != other.metadata()["rule"]


def test_save_and_load_give_identical_predictions(tmp_path: Path) -> None:
    bars = momentum_bars(900)
    model = EvoFamily()
    model.fit(train_set(bars))
    [path] = model.save(tmp_path)
    assert path.name == "evo.json"
    state = json.loads(path.read_text())  # plain JSON numbers, no pickle
    assert state["params"]["features"] == list(DEFAULT_FEATURES)
    loaded = EvoFamily.load(tmp_path, {"model": model.metadata()})
    idx = np.arange(100, 890)
    a, b = model.predict(bars, idx), loaded.predict(bars, idx)
    np.testing.assert_array_equal(a.position, b.position)
    np.testing.assert_array_equal(a.mu, b.mu)
    np.testing.assert_array_equal(a.p_up, b.p_up)
    assert loaded.metadata() == model.metadata()


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown EvoParams keys"):
        EvoParams.from_mapping({"popsize": 10})
    with pytest.raises(ValueError, match="unknown features"):
        EvoParams.from_mapping({"features": ["ret_1", "moon_phase"]})
    assert EvoParams.from_mapping({"features": ["ret_1"]}).features == ("ret_1",)


def test_predict_before_fit_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        EvoFamily().predict(momentum_bars(200), np.arange(10))
