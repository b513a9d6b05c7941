"""The trust-weighted ensemble and the signal payload."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantum_daemon.core.ensemble import (
    MemberForecast,
    SizerDecision,
    build_signal,
    combine,
    parse_signal,
    plain_position,
    pool_forecasts,
    signal_fields,
    signal_json,
)
from quantum_daemon.core.scoring import score_forecast
from quantum_daemon.models.base import Forecast


def member(family: str, mu: float, p_up: float) -> MemberForecast:
    return MemberForecast(family, f"{family}_BTCUSDT_1h", "v20260101_000000", mu, p_up)


def test_linear_pool_by_hand() -> None:
    ens = combine(
        [member("xgb", 0.02, 0.8), member("lgbm", -0.01, 0.4)], {"xgb": 0.75, "lgbm": 0.25}
    )
    assert ens.mu == pytest.approx(0.75 * 0.02 - 0.25 * 0.01)
    assert ens.p_up == pytest.approx(0.75 * 0.8 + 0.25 * 0.4)
    assert {c.family: c.weight for c in ens.contributions} == {"xgb": 0.75, "lgbm": 0.25}


def test_weights_renormalize_over_the_families_that_answered() -> None:
    weights = {"xgb": 0.4, "lgbm": 0.2, "nhits": 0.2, "rl_sizer": 0.2}
    ens = combine([member("xgb", 0.0, 0.9), member("lgbm", 0.0, 0.3)], weights)
    w = {c.family: c.weight for c in ens.contributions}
    assert w["xgb"] == pytest.approx(2 / 3) and w["lgbm"] == pytest.approx(1 / 3)


def test_a_family_without_trust_yet_enters_at_one_over_n() -> None:
    ens = combine([member("xgb", 0.0, 0.9), member("patchtst", 0.0, 0.3)], {"xgb": 1.0})
    assert {c.family: c.weight for c in ens.contributions}["patchtst"] == pytest.approx(0.5)


def test_the_sizer_is_never_part_of_the_ensemble() -> None:
    ens = combine([member("xgb", 0.01, 0.7), member("rl_sizer", 1.0, 1.0)], {"xgb": 0.5})
    assert [c.family for c in ens.contributions] == ["xgb"]
    assert ens.p_up == pytest.approx(0.7)


def test_combine_refuses_nothing_and_duplicates() -> None:
    with pytest.raises(ValueError):
        combine([], {})
    with pytest.raises(ValueError):
        combine([member("xgb", 0, 0.5), member("xgb", 0, 0.6)], {})


def test_ensemble_brier_is_at_most_the_weighted_average_brier() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        ps, realized = rng.uniform(0, 1, size=3), float(rng.normal())
        raw = rng.uniform(0.01, 1, size=3)
        weights = dict(zip(["xgb", "lgbm", "nhits"], raw / raw.sum(), strict=True))
        members = [member(f, 0.0, float(p)) for f, p in zip(weights, ps, strict=True)]
        ens = combine(members, weights)
        average = sum(
            weights[m.family] * score_forecast(0, m.p_up, realized).brier for m in members
        )
        assert score_forecast(0, ens.p_up, realized).brier <= average + 1e-12


def test_pool_forecasts_matches_combine_bar_by_bar() -> None:
    rng = np.random.default_rng(6)
    forecasts = {
        f: Forecast(mu=rng.normal(0, 0.01, 20), p_up=rng.uniform(0, 1, 20)) for f in ("xgb", "lgbm")
    }
    weights = {"xgb": 0.3, "lgbm": 0.7}
    pooled = pool_forecasts(forecasts, weights)
    for i in range(20):
        ens = combine([member(f, fc.mu[i], fc.p_up[i]) for f, fc in forecasts.items()], weights)
        assert pooled.mu[i] == pytest.approx(ens.mu)
        assert pooled.p_up[i] == pytest.approx(ens.p_up)


def test_signal_uses_the_plain_rule_without_a_sizer() -> None:
    ens = combine([member("xgb", 0.01, 0.7)], {"xgb": 1.0})
    signal = build_signal("BTCUSDT", "1h", 1_700_000_000_000, ens, None, latency_ms=3.5)
    assert signal.position == plain_position(0.01, 0.7) == 1.0
    assert signal.position_source == "plain_rule"
    assert signal.versions == {"xgb": "v20260101_000000"}


def test_signal_uses_the_sizer_when_one_is_active() -> None:
    ens = combine([member("xgb", 0.01, 0.7)], {"xgb": 1.0})
    sizer = SizerDecision(0.4, "rl_sizer_BTCUSDT_1h", "v20260102_000000")
    signal = build_signal("BTCUSDT", "1h", 1_700_000_000_000, ens, sizer, latency_ms=3.5)
    assert (signal.position, signal.position_source, signal.plain_position) == (
        0.4,
        "rl_sizer",
        1.0,
    )
    assert signal.versions["rl_sizer"] == "v20260102_000000"


def test_signal_fields_round_trip_through_redis(redis_client) -> None:
    ens = combine([member("xgb", 0.01, 0.7), member("nhits", -0.002, 0.45)], {"xgb": 0.6})
    signal = build_signal("BTCUSDT", "1h", 1_700_000_000_000, ens, None, latency_ms=2.25)
    redis_client.xadd("quantum:signals:BTCUSDT:1h", signal_fields(signal))
    [(_, fields)] = redis_client.xrange("quantum:signals:BTCUSDT:1h")
    assert parse_signal(fields) == signal
    as_json = json.loads(json.dumps(signal_json(signal)))
    assert as_json["contributions"][0]["family"] == "xgb"
    assert as_json["latency_ms"] == 2.25


def test_a_flat_signal_says_why_and_carries_the_shadow_pool(redis_client) -> None:
    from quantum_daemon.core.ensemble import flat_signal

    shadow = combine([member("xgb", 0.02, 0.7), member("lgbm", 0.01, 0.6)], {})
    signal = flat_signal("BTCUSDT", "1h", 1_700_000_000_000, "no active model", shadow, 1.5)
    assert (signal.status, signal.position, signal.mu, signal.p_up) == ("flat", 0.0, 0.0, 0.5)
    assert signal.shadow is not None and signal.shadow.p_up == pytest.approx(0.65)
    assert signal.shadow.plain_position == 1.0  # what the plain rule would have held
    assert signal.view() == (signal.shadow.mu, signal.shadow.p_up, 1.0)
    redis_client.xadd("sig", signal_fields(signal))
    [(_, fields)] = redis_client.xrange("sig")
    assert parse_signal(fields) == signal
    assert signal_json(signal)["shadow"]["versions"] == {  # type: ignore[index]
        "xgb": "v20260101_000000",
        "lgbm": "v20260101_000000",
    }
    nothing = flat_signal("BTCUSDT", "1h", 1, "no active model and no candidate", None, 0.0)
    assert nothing.view() is None and "shadow_mu" not in signal_fields(nothing)
    # an entry written before the status field reads as live
    live = build_signal("BTCUSDT", "1h", 2, shadow, None, latency_ms=1.0)
    old = {k: v for k, v in signal_fields(live).items() if k not in ("status", "reason")}
    assert parse_signal(old) == live
