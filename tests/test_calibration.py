"""Calibration of p_up and the expected calibration error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantum_daemon.core.calibration import (
    Calibrator,
    expected_calibration_error,
    fit_calibrator,
    fit_logistic,
    reliability,
)


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True probabilities q, a forecaster that stretches them (p = sigmoid(3 logit q)),
    and outcomes drawn from q."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.25, 0.75, n)
    p = 1 / (1 + np.exp(-3 * np.log(q / (1 - q))))
    return q, p, (rng.uniform(size=n) < q).astype(float)


def test_ece_by_hand() -> None:
    p = np.array([0.1, 0.15, 0.6, 0.65, 0.9])
    y = np.array([0, 1, 1, 0, 1])
    # bins: {0.1, 0.15}: |0.5 - 0.125|; {0.6, 0.65}: |0.5 - 0.625|; {0.9}: |1 - 0.9|
    assert expected_calibration_error(p, y) == pytest.approx(0.4 * 0.375 + 0.4 * 0.125 + 0.2 * 0.1)


def test_reliability_bins_hold_every_point_once() -> None:
    p = np.array([0.0, 0.05, 0.5, 0.999, 1.0])
    bins = reliability(p, np.array([0, 0, 1, 1, 1]))
    assert sum(b.count for b in bins) == 5
    assert bins[-1].lower == 0.9 and bins[-1].count == 2


def test_a_calibrated_forecaster_has_small_ece() -> None:
    q, _, y = overconfident(50_000, seed=1)
    assert expected_calibration_error(q, y) < 0.01


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_an_overconfident_forecaster_becomes_calibrated(method: str) -> None:
    _, p_val, y_val = overconfident(3_000, seed=2)
    _, p_test, y_test = overconfident(30_000, seed=3)
    calibrator = fit_calibrator(p_val, y_val, method=method)  # type: ignore[arg-type]
    before = expected_calibration_error(p_test, y_test)
    after = expected_calibration_error(calibrator.apply(p_test), y_test)
    assert before > 0.08
    assert after < 0.025
    assert calibrator.method == method


def test_platt_recovers_the_stretch() -> None:
    """p = sigmoid(3 logit q), so the calibrated map is sigmoid(logit(p) / 3)."""
    _, p, y = overconfident(200_000, seed=4)
    calibrator = fit_calibrator(p, y, method="platt")
    assert calibrator.slope == pytest.approx(1 / 3, abs=0.02)
    assert calibrator.intercept == pytest.approx(0.0, abs=0.02)


def test_fit_logistic_finds_known_coefficients() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=100_000)
    y = (rng.uniform(size=x.size) < 1 / (1 + np.exp(-(2.0 * x - 0.5)))).astype(float)
    a, b = fit_logistic(x, y)
    assert a == pytest.approx(2.0, abs=0.05) and b == pytest.approx(-0.5, abs=0.05)


def test_calibrated_maps_are_monotone_and_inside_the_unit_interval() -> None:
    _, p, y = overconfident(2_000, seed=6)
    grid = np.linspace(0, 1, 501)
    for method in ("platt", "isotonic"):
        out = fit_calibrator(p, y, method=method).apply(grid)  # type: ignore[arg-type]
        assert np.all(np.diff(out) >= 0)
        assert out.min() > 0 and out.max() < 1


def test_too_little_data_or_one_class_leaves_p_up_alone() -> None:
    p = np.array([0.2, 0.7, 0.9])
    assert fit_calibrator(p, np.array([0, 1, 1])).method == "identity"
    _, p_many, _ = overconfident(500, seed=7)
    assert fit_calibrator(p_many, np.ones(500)).method == "identity"
    assert np.allclose(Calibrator().apply(np.array([0.3, 0.6])), [0.3, 0.6])


def test_nan_rows_are_left_out() -> None:
    _, p, y = overconfident(1_000, seed=8)
    y_with_gaps = y.copy()
    y_with_gaps[-100:] = np.nan  # outcomes not known yet
    fitted = fit_calibrator(p, y_with_gaps)
    assert fitted == fit_calibrator(p[:-100], y[:-100])


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibrator_round_trips_through_json(method: str) -> None:
    _, p, y = overconfident(1_000, seed=9)
    calibrator = fit_calibrator(p, y, method=method)  # type: ignore[arg-type]
    again = Calibrator.from_dict(json.loads(json.dumps(calibrator.to_dict())))
    assert again == calibrator
    np.testing.assert_array_equal(again.apply(p), calibrator.apply(p))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([1.2]), np.array([1]))
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([0.5]), np.array([2]))
    with pytest.raises(ValueError):
        fit_calibrator(np.ones(3), np.ones(4))


def test_platt_never_inverts_the_ranking() -> None:
    """A validation window where higher p_up went with fewer ups gives no
    calibration rather than a map that reverses the model's order."""
    from quantum_daemon.core.calibration import fit_calibrator

    rng = np.random.default_rng(3)
    p = rng.uniform(0.3, 0.7, 400)
    up = (rng.uniform(size=400) > p).astype(float)
    calibrator = fit_calibrator(p, up, method="platt")
    assert calibrator.method == "identity"
    assert np.all(np.diff(calibrator.apply(np.sort(p))) >= 0)
