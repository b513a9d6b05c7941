"""Calibration of ``p_up`` on the validation window, and its reliability.

A family's ``p_up`` is calibrated when, among the bars where it says 0.6,
the price goes up 60% of the time. ``fit_calibrator`` learns a monotone map
from the family's raw ``p_up`` to calibrated probabilities on the validation
window (never the training window, where the model's own fit makes it look
better than it is); the family applies it to every later prediction.

- ``platt`` (Platt 1999): ``p' = sigmoid(a logit(p) + b)``, fitted by Newton's
  method on the log loss, with Platt's smoothed targets
  ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` so that a small or separable
  window cannot push ``a`` to infinity. Two parameters: the default, robust
  on a few hundred validation bars.
- ``isotonic``: the least-squares non-decreasing step function
  (scikit-learn's ``IsotonicRegression``, imported only while fitting),
  applied by linear interpolation between its knots like scikit-learn does.
  Needs more bars; may flatten the map into steps.
- ``identity``: too few validation bars (``min_samples``), a single class, or
  a Platt fit with a slope <= 0 (which would invert the model's ranking):
  calibration is left out rather than fitted on noise.

Calibrated probabilities are clipped to [1e-4, 1 - 1e-4]. A ``Calibrator`` is
plain numbers (``to_dict`` / ``from_dict`` for the model's JSON metadata):
applying it needs numpy only.

``expected_calibration_error`` (ECE): with ``n_bins`` equal-width bins of
``p``, the bin-size-weighted mean of ``|frequency of ups - mean p|``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Method = Literal["identity", "platt", "isotonic"]
PROB_EPS = 1e-4
MIN_SAMPLES = 50
NEWTON_STEPS = 100
RIDGE = 1e-9  # keeps the Newton system invertible when logit(p) is constant


@dataclass(frozen=True)
class Calibrator:
    """A fitted monotone map of ``p_up``; see the module docstring."""

    method: Method = "identity"
    slope: float = 1.0
    intercept: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()

    def apply(self, p_up: np.ndarray) -> np.ndarray:
        p = np.asarray(p_up, dtype=np.float64)
        if self.method == "platt":
            out = _sigmoid(self.slope * _logit(p) + self.intercept)
        elif self.method == "isotonic":
            out = np.interp(p, self.knots_x, self.knots_y)
        else:
            out = p
        return np.clip(out, PROB_EPS, 1.0 - PROB_EPS)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"knots_x": list(self.knots_x), "knots_y": list(self.knots_y)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        return cls(
            method=data["method"],
            slope=float(data["slope"]),
            intercept=float(data["intercept"]),
            knots_x=tuple(float(v) for v in data["knots_x"]),
            knots_y=tuple(float(v) for v in data["knots_y"]),
        )


def fit_calibrator(
    p_up: np.ndarray, up: np.ndarray, method: Method = "platt", min_samples: int = MIN_SAMPLES
) -> Calibrator:
    """Fit on validation forecasts ``p_up`` and outcomes ``up`` (1 when the
    horizon return was positive, else 0); NaN rows are left out."""
    p, y = _known(p_up, up)
    if method == "identity" or y.size < min_samples or y.min() == y.max():
        return Calibrator()
    if method == "platt":
        slope, intercept = fit_logistic(_logit(p), y, smoothed=True)
        # A negative slope would reverse the model's own ranking on what is,
        # on a few hundred overlapping targets, most likely noise.
        if slope <= 0:
            return Calibrator()
        return Calibrator("platt", slope=slope, intercept=intercept)
    if method == "isotonic":
        return _fit_isotonic(p, y)
    raise ValueError(f"unknown calibration method {method!r}")


def fit_logistic(x: np.ndarray, y: np.ndarray, smoothed: bool = False) -> tuple[float, float]:
    """(a, b) minimizing the log loss of ``sigmoid(a x + b)`` against ``y`` by
    Newton's method; ``smoothed`` uses Platt's targets (module docstring)."""
    target = _platt_targets(y) if smoothed else y.astype(np.float64)
    design = np.column_stack([x, np.ones_like(x)])
    theta = np.zeros(2)
    for _ in range(NEWTON_STEPS):
        prob = _sigmoid(design @ theta)
        gradient = design.T @ (prob - target)
        hessian = (design * (prob * (1 - prob))[:, None]).T @ design + RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def _platt_targets(y: np.ndarray) -> np.ndarray:
    n_pos = float(np.sum(y == 1))
    n_neg = float(y.size - n_pos)
    return np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> Calibrator:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    model.fit(p, y.astype(np.float64))
    return Calibrator(
        "isotonic",
        knots_x=tuple(float(v) for v in model.X_thresholds_),
        knots_y=tuple(float(v) for v in model.y_thresholds_),
    )


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: ``[lower, upper)`` of ``p``."""

    lower: float
    upper: float
    count: int
    mean_p: float
    frequency: float


def reliability(p_up: np.ndarray, up: np.ndarray, n_bins: int = 10) -> tuple[ReliabilityBin, ...]:
    """Equal-width bins of ``p_up`` (1.0 falls in the last); empty bins left out."""
    p, y = _known(p_up, up)
    which = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    bins = []
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            bins.append(
                ReliabilityBin(
                    b / n_bins,
                    (b + 1) / n_bins,
                    int(inside.sum()),
                    float(p[inside].mean()),
                    float(y[inside].mean()),
                )
            )
    return tuple(bins)


def expected_calibration_error(p_up: np.ndarray, up: np.ndarray, n_bins: int = 10) -> float:
    """ECE in [0, 1]; NaN without any known outcome."""
    bins = reliability(p_up, up, n_bins)
    total = sum(b.count for b in bins)
    if total == 0:
        return math.nan
    return math.fsum(b.count / total * abs(b.frequency - b.mean_p) for b in bins)


def _known(p_up: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(p_up, dtype=np.float64)
    y = np.asarray(up, dtype=np.float64)
    if p.shape != y.shape:
        raise ValueError(f"p_up {p.shape} and outcomes {y.shape} differ")
    keep = ~(np.isnan(p) | np.isnan(y))
    p, y = p[keep], y[keep]
    if np.any((p < 0) | (p > 1)) or np.any((y != 0) & (y != 1)):
        raise ValueError("p_up must lie in [0, 1] and outcomes be 0 or 1")
    return p, y


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    return np.log(q / (1.0 - q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|
