"""simulate's interval record: each version's out-of-sample forecasts with
intervals scored against the outcome ``horizon`` bars later."""

from __future__ import annotations

import numpy as np
import pytest

from quantum_daemon.core.conformal import pinball_loss
from quantum_daemon.simulate.intervals import interval_stats
from quantum_daemon.simulate.records import Prediction, VersionRecord
from tests.conftest import make_bars


def test_interval_stats_score_each_forecast_against_its_own_horizon() -> None:
    bars = make_bars(40, seed=3, symbol="BTCUSDT")
    close = bars.close
    horizon = 3
    version = VersionRecord("xgb_BTCUSDT_1h", "xgb", "BTCUSDT", "v1", "", 0, 10, horizon)
    outcome = {i: float(np.log(close[i + horizon] / close[i])) for i in range(10, 37)}
    for i, y in outcome.items():  # every other interval holds the outcome
        half = 0.5 if i % 2 else -0.5  # too high (a miss) when odd
        version.predictions[i] = Prediction(0.0, 0.5, None, (y - 0.01 + half, y + half, y + 0.01))
    version.predictions[37] = Prediction(0.0, 0.5, None, (-1.0, 0.0, 1.0))  # outcome past the data
    version.predictions[38] = Prediction(0.0, 0.5, None, None)  # no intervals
    other = VersionRecord("lgbm_BTCUSDT_1h", "lgbm", "BTCUSDT", "v1", "", 0, 10, horizon)
    models, families = interval_stats([version, other], {"BTCUSDT": bars})
    stats = models["xgb_BTCUSDT_1h"]
    assert stats["n"] == len(outcome)
    assert stats["coverage_90"] == pytest.approx(np.mean([i % 2 == 0 for i in outcome]))
    expected = np.mean(
        [
            pinball_loss(np.array([y]), np.array([q]), lv)[0]
            for i, y in outcome.items()
            for q, lv in zip(version.predictions[i].quantiles or (), (0.05, 0.5, 0.95), strict=True)
        ]
    )
    assert stats["pinball"] == pytest.approx(expected)
    assert families["xgb"]["n"] == len(outcome) and families["xgb"]["nominal"] == pytest.approx(0.9)
    assert models["lgbm_BTCUSDT_1h"] == {"n": 0, "coverage_90": None, "pinball": None}
