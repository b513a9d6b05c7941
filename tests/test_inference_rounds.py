"""Settling live predictions (pure) and the records they live in (SQLite):
forecasts by their Brier score at the horizon, positions against the plain
rule one bar later, gaps void, one trust round per settling bar."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from quantum_daemon.core.evaluation.backtest import cost_rate
from quantum_daemon.core.scoring import return_scale, score_forecast, score_position
from quantum_daemon.inference.messages import ModelAnswer, PredictAnswer
from quantum_daemon.inference.rounds import bars_needed, due_ts, settle, trust_rounds
from quantum_daemon.inference.signals import decision_rows, prediction_rows, signals_of
from quantum_daemon.storage.prediction_records import DuePrediction, PredictionRecords, Settled
from tests.conftest import make_bars

H = 3_600_000
RATE = cost_rate(10.0, 2.0)


def due(ts: int, **kw: object) -> DuePrediction:
    fields: dict[str, object] = {
        "model_id": "xgb_TESTUSDT_1h", "version": "v1", "family": "xgb", "stage": "active",
        "symbol": "TESTUSDT", "tf": "1h", "ts": ts, "due_ts": ts + 2 * H, "mu": 0.01,
        "p_up": 0.7, "position": None, "previous_position": None, "plain": None,
        "previous_plain": None,
    }  # fmt: skip
    fields.update(kw)
    return DuePrediction(**fields)  # type: ignore[arg-type]


def test_a_forecast_is_settled_by_its_brier_score_at_the_horizon() -> None:
    bars = make_bars(200, seed=1)
    t = 150
    [settled] = settle([due(int(bars.ts[t]))], bars, RATE)
    realized = math.log(bars.close[t + 2] / bars.close[t])
    assert settled.loss == score_forecast(0.01, 0.7, realized).loss


def test_a_position_is_settled_against_the_plain_rule_one_bar_later() -> None:
    bars = make_bars(200, seed=2)
    t = 150
    p = due(
        int(bars.ts[t]), family="rl_sizer", due_ts=int(bars.ts[t + 1]), position=0.5,
        previous_position=-1.0, plain=1.0, previous_plain=None,
    )  # fmt: skip
    [settled] = settle([p], bars, RATE)
    asset = bars.close[t + 1] / bars.close[t] - 1
    expected = score_position(
        (-1.0, 0.5), (0.0, 1.0), asset, RATE, return_scale(bars.close[: t + 1])
    )
    assert settled.loss == expected.loss


def test_a_missing_settling_bar_makes_the_prediction_void() -> None:
    bars = make_bars(50, seed=3)
    keep = np.ones(50, dtype=bool)
    keep[42] = False  # a gap where the horizon ends
    gappy = type(bars)(
        bars.symbol, bars.tf, bars.ts[keep], bars.open[keep], bars.high[keep],
        bars.low[keep], bars.close[keep], bars.volume[keep],
    )  # fmt: skip
    [void, kept] = settle([due(int(bars.ts[40])), due(int(bars.ts[41]))], gappy, RATE)
    assert void.loss is None and kept.loss is not None


def test_one_round_per_settling_bar_and_candidates_score_in_shadow() -> None:
    ps = [
        due(10 * H, due_ts=12 * H),
        due(10 * H, model_id="xgb_TESTUSDT_1h", version="v2", stage="candidate", due_ts=12 * H),
        due(11 * H, due_ts=11 * H + H, family="evo_model", model_id="evo_model_TESTUSDT_1h"),
        due(9 * H, due_ts=11 * H),
    ]
    settled = [Settled(p.model_id, p.version, p.symbol, p.ts, 0.2) for p in ps]
    settled[3] = Settled(ps[3].model_id, ps[3].version, ps[3].symbol, ps[3].ts, None)
    rounds = trust_rounds(ps, settled, H)
    assert [r for r, _ in rounds] == [13 * H]  # the void one made no round of its own
    [(_, scores)] = rounds
    assert [(s.family, s.version, s.shadow) for s in scores] == [
        ("xgb", "v1", False), ("xgb", "v2", True), ("evo_model", "v1", False),
    ]  # fmt: skip
    assert bars_needed(ps, H) == (9 * H - 97 * H, 12 * H + 1)
    assert due_ts(10 * H, 24, H, is_position=True) == 11 * H
    assert due_ts(10 * H, 24, H, is_position=False) == 34 * H


def answer(ts: tuple[int, ...]) -> PredictAnswer:
    n = len(ts)

    def model(family: str, stage: str = "active", position: float | None = None) -> ModelAnswer:
        pos = None if position is None else (position,) * n
        return ModelAnswer(
            f"{family}_TESTUSDT_1h", family, "v1", stage, 2, (0.02,) * n, (0.8,) * n, pos
        )

    return PredictAnswer(
        1, "TESTUSDT", "1h", ts, (100.0,) * n,
        (model("xgb"), model("lgbm", "candidate"), model("evo_model", position=-1.0),
         model("rl_sizer", position=0.25)),
    )  # fmt: skip


def test_signals_pool_the_active_forecasters_and_take_the_sizers_position() -> None:
    [signal] = signals_of(answer((5 * H,)), [{"xgb": 0.5, "evo_model": 0.5}], 3.0, 0.05)
    assert {c.family for c in signal.contributions} == {"xgb", "evo_model"}  # no candidate
    assert (signal.position, signal.position_source) == (0.25, "rl_sizer")
    assert signal.plain_position == 1.0
    assert signal.latency_ms == 3.0
    assert signal.versions == {"xgb": "v1", "evo_model": "v1", "rl_sizer": "v1"}


def test_records_keep_the_first_word_and_find_what_is_due(tmp_path: Path) -> None:
    records = PredictionRecords(tmp_path / "p.sqlite3")
    first = answer((5 * H, 6 * H))
    signals = signals_of(first, [{}, {}], 1.0, 0.05)
    records.record(prediction_rows(first, H), decision_rows(signals))
    again = PredictAnswer(2, "TESTUSDT", "1h", (6 * H,), (1.0,), first.models[:1])
    records.record(prediction_rows(again, H), [])  # the same bar predicted again: ignored
    assert records.due("TESTUSDT", "1h", H, 5 * H) == []
    found = records.due("TESTUSDT", "1h", H, 7 * H)
    # the positions due at 6h and 7h, the forecasts of bar 5h (due 7h)
    assert {(p.family, p.ts) for p in found} == {
        ("evo_model", 5 * H), ("rl_sizer", 5 * H), ("evo_model", 6 * H), ("rl_sizer", 6 * H),
        ("xgb", 5 * H), ("lgbm", 5 * H),
    }  # fmt: skip
    evo6 = next(p for p in found if p.family == "evo_model" and p.ts == 6 * H)
    assert (evo6.previous_position, evo6.plain, evo6.previous_plain) == (-1.0, 1.0, 1.0)
    records.settle([Settled(p.model_id, p.version, p.symbol, p.ts, 0.1) for p in found])
    assert records.due("TESTUSDT", "1h", H, 7 * H) == []
    assert records.losses("xgb_TESTUSDT_1h", "v1") == {5 * H: pytest.approx(0.1)}
    assert records.last_decisions() == {("TESTUSDT", "1h"): 6 * H}
    assert records.prune(6 * H) == 4
    records.close()
