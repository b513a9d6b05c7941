"""The torch families as daemon families: the family interface, causality,
normalization, persistence, and a run through the walk-forward evaluator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from quantum_daemon.domain.bars import Bars
from quantum_daemon.models.base import TrainSet
from quantum_daemon.models.neural import (
    ARTIFACT,
    NeuralFamily,
    NHiTSFamily,
    PatchTSTFamily,
    fit_scaling,
    inputs_at,
)
from tests.conftest import make_bars

HORIZON = 6
TINY: dict[type[NeuralFamily], dict[str, Any]] = {
    NHiTSFamily: dict(
        lookback=24,
        pool_kernels=[4, 2, 1],
        downsample=[6, 2, 1],
        hidden=16,
        max_steps=40,
        eval_every=10,
        patience=3,
        batch_size=32,
        device="cpu",
        threads=1,
    ),
    PatchTSTFamily: dict(
        lookback=32,
        patch_len=8,
        stride=4,
        d_model=8,
        n_heads=2,
        n_layers=1,
        d_ff=16,
        max_steps=40,
        eval_every=10,
        patience=3,
        batch_size=32,
        device="cpu",
        threads=1,
    ),
}
FAMILIES = list(TINY)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def train_set(bars: Bars, family: type[NeuralFamily], seed: int = 0) -> TrainSet:
    train_idx, val_idx = np.arange(0, 250), np.arange(250 + HORIZON, 330)
    return TrainSet(bars.slice(0, 330 + HORIZON), HORIZON, train_idx, val_idx, seed, TINY[family])


@pytest.fixture(scope="module")
def bars() -> Bars:
    # Price around 30,000 with 1% moves: raw prices would give huge losses.
    base = make_bars(420, seed=7, vol=0.01)
    scale = 300.0
    return Bars(
        base.symbol,
        base.tf,
        base.ts,
        base.open * scale,
        base.high * scale,
        base.low * scale,
        base.close * scale,
        base.volume,
    )


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.name)
def fitted(request: pytest.FixtureRequest, bars: Bars) -> tuple[NeuralFamily, Any]:
    family = request.param()
    info = family.fit(train_set(bars, request.param))
    return family, info


def test_forecasts_are_finite_probabilities_and_log_returns(
    fitted: tuple[NeuralFamily, Any], bars: Bars
) -> None:
    family, _ = fitted
    idx = np.arange(340, 410)
    forecast = family.predict(bars, idx)
    assert forecast.mu.shape == forecast.p_up.shape == (70,)
    assert np.isfinite(forecast.mu).all()
    assert ((forecast.p_up > 0) & (forecast.p_up < 1)).all()
    # Six bars of 1% moves: the expected log return is a few percent at most.
    assert np.abs(forecast.mu).max() < 0.2
    assert np.array_equal(forecast.p_up > 0.5, forecast.mu > 0)


def test_validation_loss_is_in_normalized_units(fitted: tuple[NeuralFamily, Any]) -> None:
    """Losses on z-scored returns are of order one whatever the price level."""
    _, info = fitted
    assert 0.1 < info.val_loss < 5.0
    assert info.extra["n_train_windows"] > 0 and info.extra["n_val_windows"] > 0
    assert 0 < info.extra["residual_sigma"] < 0.2


def test_prediction_uses_only_bars_up_to_the_decision(
    fitted: tuple[NeuralFamily, Any], bars: Bars
) -> None:
    family, _ = fitted
    idx = np.array([300, 350, 399])
    full = family.predict(bars, idx)
    for i, t in enumerate(idx):
        alone = family.predict(bars.slice(0, int(t) + 1), np.array([t]))
        assert alone.mu[0] == pytest.approx(full.mu[i], rel=1e-5, abs=1e-9)


def test_save_then_load_gives_identical_predictions(
    fitted: tuple[NeuralFamily, Any], bars: Bars, tmp_path: Path
) -> None:
    family, _ = fitted
    paths = family.save(tmp_path)
    assert paths == [tmp_path / ARTIFACT]
    meta = json.loads(json.dumps({"model": family.metadata()}))  # JSON-able, as stored
    loaded = type(family).load(tmp_path, meta)
    idx = np.arange(340, 410)
    assert np.array_equal(loaded.predict(bars, idx).mu, family.predict(bars, idx).mu)
    assert np.array_equal(loaded.predict(bars, idx).p_up, family.predict(bars, idx).p_up)
    with safe_open(str(paths[0]), framework="pt") as artifact:
        header = json.loads(artifact.metadata()["quantum_daemon"])
    assert header["scaling"] == meta["model"]["scaling"]
    assert header["architecture"] == meta["model"]["architecture"]


def test_loading_another_familys_artifact_fails(
    fitted: tuple[NeuralFamily, Any], tmp_path: Path
) -> None:
    family, _ = fitted
    family.save(tmp_path)
    other = PatchTSTFamily if isinstance(family, NHiTSFamily) else NHiTSFamily
    with pytest.raises(ValueError, match="family"):
        other.load(tmp_path, {"model": family.metadata()})


def test_normalization_is_fitted_on_the_training_window_only(bars: Bars) -> None:
    """Changing bars after the last training decision leaves the scaling as it was."""
    after = np.arange(len(bars)) > 250
    changed = Bars(
        bars.symbol,
        bars.tf,
        bars.ts,
        bars.open,
        np.where(after, bars.high * 1.5, bars.high),
        bars.low,
        np.where(after, bars.close * 3.0, bars.close),
        np.where(after, bars.volume * 9, bars.volume),
    )
    channels = ("ret", "range", "volume")
    assert fit_scaling(bars, channels, 250) == fit_scaling(changed, channels, 250)
    assert fit_scaling(bars, channels, 250) != fit_scaling(changed, channels, 300)


def test_inputs_are_the_lookback_ending_at_the_decision() -> None:
    z = np.arange(20, dtype=np.float32).reshape(10, 2)
    x = inputs_at(z, np.array([1, 9]), lookback=4)
    assert x.shape == (2, 2, 4)
    assert x[0, 0].tolist() == [0, 0, 0, 2]  # zeros before the first bar
    assert x[1, 1].tolist() == [13, 15, 17, 19]


def test_fitting_is_deterministic(bars: Bars) -> None:
    forecasts = []
    for _ in range(2):
        family = NHiTSFamily()
        family.fit(train_set(bars, NHiTSFamily, seed=5))
        forecasts.append(family.predict(bars, np.arange(340, 360)).mu)
    assert np.array_equal(forecasts[0], forecasts[1])


def test_unknown_parameters_are_rejected(bars: Bars) -> None:
    data = train_set(bars, NHiTSFamily)
    bad = TrainSet(data.bars, data.horizon, data.train_idx, data.val_idx, 0, {"hiden": 3})
    with pytest.raises(ValueError, match="hiden"):
        NHiTSFamily().fit(bad)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_walk_forward_evaluator_judges_the_family(family: type[NeuralFamily]) -> None:
    """The neural families run through the same evaluator as the trees."""
    walkforward = pytest.importorskip("quantum_daemon.core.evaluation.walkforward")
    bars = make_bars(400, seed=3)
    settings = walkforward.EvaluationSettings(horizon=HORIZON, n_test_windows=2)
    evaluation = walkforward.walk_forward(family, bars, settings, seed=0, params=TINY[family])
    report = evaluation.report
    assert len(report.folds) == 2
    assert np.isfinite(report.mu).all() and ((report.p_up > 0) & (report.p_up < 1)).all()
    assert all(0.1 < outcome.fit.val_loss < 5.0 for outcome in report.folds)
    assert isinstance(evaluation.model, family)


def test_families_are_registered() -> None:
    families = pytest.importorskip("quantum_daemon.models.families")
    assert families.family_class("nhits") is NHiTSFamily
    assert families.family_class("patchtst") is PatchTSTFamily
