"""Trust weights as of a bar: a catch-up bar is pooled with the weights of
the rounds applied up to its close, never with a later round's, in the
worker's sizer and in the published signal alike; the live one-bar request
carries no per-bar weights; a restart rebuilds the timeline from the trust
history."""

from __future__ import annotations

import asyncio
import json
import pickle
import sqlite3
from pathlib import Path

import pytest
import redis

from quantum_daemon.core.ensemble import MemberForecast, Signal, combine, parse_signal
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.timeframes import DAY_MS, HOUR_MS
from quantum_daemon.inference import InferenceService
from quantum_daemon.inference.messages import PredictRequest
from quantum_daemon.inference.timeline import WeightTimeline, rounds_in_history
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.prediction_records import RECORDS_FILE
from tests.inference_helpers import Feeder, bar_at, inference, make_config
from tests.planted_family import install_version, planted_market

KEYS = Keys()
A, B, TF = "TESTUSDT", "OTHERUSDT", "1h"
FAMILIES = ("xgb", "lgbm", "rl_sizer")
H = HOUR_MS
WIRE_BYTES = 400  # a one-bar request with three weights, pickled

# -- the timeline, pure ---------------------------------------------------------------


def test_a_bar_takes_the_weights_of_the_rounds_up_to_its_close_and_uniform_before() -> None:
    timeline = WeightTimeline()
    timeline.append(10 * H, {"xgb": 0.6, "lgbm": 0.4})
    timeline.append(11 * H, {"xgb": 0.7, "lgbm": 0.3})
    assert timeline.at(10 * H - 1) == ()  # before the first round: uniform
    assert dict(timeline.at(10 * H)) == {"xgb": 0.6, "lgbm": 0.4}
    assert dict(timeline.at(10 * H + 1)) == {"xgb": 0.6, "lgbm": 0.4}
    assert dict(timeline.at(50 * H)) == {"xgb": 0.7, "lgbm": 0.3}


def test_a_round_applied_late_for_an_older_time_counts_only_after_every_earlier_round() -> None:
    """Series A's rounds up to 20h, then B's backlog round at 12h: the weights
    after it include A's round at 20h, so no bar closing before 20h gets them."""
    timeline = WeightTimeline()
    timeline.append(10 * H, {"xgb": 0.6, "lgbm": 0.4})
    timeline.append(20 * H, {"xgb": 0.8, "lgbm": 0.2})
    timeline.append(12 * H, {"xgb": 0.85, "lgbm": 0.15})
    assert dict(timeline.at(12 * H)) == {"xgb": 0.6, "lgbm": 0.4}
    assert dict(timeline.at(19 * H)) == {"xgb": 0.6, "lgbm": 0.4}
    assert dict(timeline.at(20 * H)) == {"xgb": 0.85, "lgbm": 0.15}
    assert timeline.starts == [0, 10 * H, 20 * H]


def test_the_oldest_rounds_beyond_the_bound_give_way_to_uniform() -> None:
    timeline = WeightTimeline(max_rounds=3)
    for k in range(1, 6):
        timeline.append(k * H, {"xgb": k / 10, "lgbm": 1 - k / 10})
    assert timeline.starts == [0, 3 * H, 4 * H, 5 * H]
    assert timeline.at(2 * H) == ()  # forgotten: uniform, never a later round's weights
    assert dict(timeline.at(3 * H))["xgb"] == pytest.approx(0.3)


def test_a_request_carries_only_the_entries_its_bars_can_select() -> None:
    timeline = WeightTimeline()
    for k in range(1, 49):  # hourly rounds over two days
        timeline.append(k * H, {"xgb": 0.5 + k / 100, "lgbm": 0.5 - k / 100})
    current = dict(timeline.newest)
    # live: the next bar after the one answered selects the newest weights
    assert timeline.for_request(46 * H, H, current) == ()
    # a daily bar closing at 48h, after hourly rounds since its predecessor's close
    assert timeline.for_request(0, DAY_MS, current) == ()
    # catch-up of the hourly bars opening at 41h..47h: each selects the round at its close
    at = timeline.for_request(40 * H, H, current)
    assert [start for start, _ in at] == [k * H for k in range(42, 49)]
    request = PredictRequest(1, A, TF, 40 * H, 100, tuple(current.items()), at)
    weights = request.bar_weights([k * H for k in range(41, 48)])
    assert weights == [dict(timeline.at((k + 1) * H)) for k in range(41, 48)]
    # daily catch-up: only the rounds at the daily closes
    assert [s for s, _ in timeline.for_request(-DAY_MS, DAY_MS, current)] == [24 * H, 48 * H]


def test_a_bar_closing_before_every_entry_the_request_carries_is_pooled_uniformly() -> None:
    request = PredictRequest(1, A, TF, None, 1, (("xgb", 0.9),), ((5 * H, (("xgb", 0.9),)),))
    assert request.bar_weights([3 * H, 4 * H]) == [{}, {"xgb": 0.9}]


def test_history_gives_back_the_rounds_since_the_live_set_last_changed() -> None:
    history = {
        "xgb": [(1 * H, 0.5), (2 * H, 0.6), (3 * H, 0.5), (4 * H, 0.4)],
        "lgbm": [(1 * H, 0.5), (2 * H, 0.4), (3 * H, 0.3), (4 * H, 0.35)],
        "nhits": [(3 * H, 0.2), (4 * H, 0.25)],  # joined at 3h
    }
    weights = {"xgb": 0.4, "lgbm": 0.35, "nhits": 0.25}
    assert rounds_in_history(history, weights) == [
        (3 * H, {"xgb": 0.5, "lgbm": 0.3, "nhits": 0.2}),
        (4 * H, weights),
    ]
    left = {
        "xgb": [(1 * H, 0.4), (2 * H, 0.6)],
        "lgbm": [(1 * H, 0.4), (2 * H, 0.4)],
        "evo_model": [(1 * H, 0.2)],  # left at 2h: xgb and lgbm alone do not sum to one at 1h
    }
    assert rounds_in_history(left, {"xgb": 0.6, "lgbm": 0.4}) == [
        (2 * H, {"xgb": 0.6, "lgbm": 0.4})
    ]


# -- on a real worker and Redis ---------------------------------------------------------


def _install(data_dir: Path) -> None:
    for symbol in (A, B):
        install_version(data_dir, "xgb", {}, symbol=symbol)  # the oracle: its weight grows
        install_version(data_dir, "lgbm", {"until_ts": 0, "seed": 1}, symbol=symbol)
        install_version(data_dir, "rl_sizer", {"positions": True}, symbol=symbol)


def _history(client: redis.Redis) -> list[tuple[int, dict[str, float]]]:
    """The rounds in ``quantum:trust:history``, oldest first (one live set, in time order)."""
    raw = {k: json.loads(v) for k, v in client.hgetall(KEYS.trust_history).items()}
    lengths = {len(entries) for entries in raw.values()}
    assert len(lengths) == 1  # the same live set throughout
    return [(raw["xgb"][i][0], {f: raw[f][i][1] for f in raw}) for i in range(lengths.pop())]


def _as_of(rounds: list[tuple[int, dict[str, float]]], close: int) -> dict[str, float]:
    """The weights after the latest round at or before ``close``; uniform ({}) before any."""
    before = [weights for ts, weights in rounds if ts <= close]
    return before[-1] if before else {}


def _pool(signal: Signal, weights: dict[str, float]) -> tuple[float, float]:
    members = [
        MemberForecast(c.family, c.model, c.version, c.mu, c.p_up) for c in signal.contributions
    ]
    pooled = combine(members, weights)
    return pooled.mu, pooled.p_up


def _sized(data_dir: Path, symbol: str) -> dict[int, tuple[float, float]]:
    with sqlite3.connect(data_dir / RECORDS_FILE) as conn:
        rows = conn.execute(
            "SELECT ts, mu, p_up FROM predictions WHERE family = 'rl_sizer' AND symbol = ?",
            (symbol,),
        ).fetchall()
    return {int(ts): (mu, p) for ts, mu, p in rows}


def _check_causal(
    client: redis.Redis, data_dir: Path, rounds: list[tuple[int, dict[str, float]]], since: int
) -> None:
    """Every signal of B from bar ``since`` on is the pool of its answers under
    the weights as of its close, the same pool the sizer sized; some old bar's
    pool under the current weights differs."""
    signals = [parse_signal(f) for _, f in client.xrange(KEYS.signals(B, TF))]
    backlog = [s for s in signals if s.ts >= since]
    assert len(backlog) > 20
    current = rounds[-1][1]
    sized = _sized(data_dir, B)
    differs = 0
    for signal in backlog:
        weights = _as_of(rounds, signal.ts + H)
        assert (signal.mu, signal.p_up) == pytest.approx(_pool(signal, weights), rel=1e-12)
        assert (signal.mu, signal.p_up) == sized[signal.ts]
        mu_now, _ = _pool(signal, current)
        differs += abs(mu_now - signal.mu) > 1e-6
    assert differs >= 10


async def _feed_a_ahead_of_b(service: InferenceService, store: BarStore, a: Bars, b: Bars) -> None:
    """Both series live for a few bars, then A alone for many: B's later bars wait."""
    feed_a, feed_b = Feeder(service, store, a), Feeder(service, store, b)
    for t in range(1, 5):
        await feed_a.feed(t)
        await feed_b.feed(t)
    await feed_a.feed(len(a))


def test_a_series_backlog_is_pooled_with_the_weights_as_of_each_bar(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    n = 40
    a, b = planted_market(n, 2, seed=2, symbol=A), planted_market(n, 2, seed=4, symbol=B)
    _install(tmp_path)
    cfg = make_config(redis_url, tmp_path)
    rounds: list[tuple[int, dict[str, float]]] = []

    async def scenario() -> None:
        async with inference(cfg, FAMILIES) as (service, store):
            await _feed_a_ahead_of_b(service, store, a, b)
            rounds.extend(_history(redis_client))  # what is known before B catches up
            request = service.request_for((B, TF))
            assert len(request.weights_at) > 10  # the catch-up carries its bars' weights
            store.insert_bars([bar_at(b, t) for t in range(4, n)])
            service.bars_stored(B, TF, n - 4)
            await service.run_until_idle()

    asyncio.run(scenario())
    _check_causal(redis_client, tmp_path, rounds, int(b.ts[4]))


def test_the_live_one_bar_request_carries_no_per_bar_weights(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    n = 30
    a, b = planted_market(n, 2, seed=2, symbol=A), planted_market(n, 2, seed=4, symbol=B)
    _install(tmp_path)
    cfg = make_config(redis_url, tmp_path)

    async def scenario() -> None:
        async with inference(cfg, FAMILIES) as (service, store):
            feed_a, feed_b = Feeder(service, store, a), Feeder(service, store, b)
            for t in range(1, n):
                await feed_a.feed(t)
                await feed_b.feed(t)
                for series in ((A, TF), (B, TF)):
                    request = service.request_for(series)
                    assert request.weights_at == ()
                    assert request.weights == tuple(service.weights.items())
                    assert len(pickle.dumps(request)) < WIRE_BYTES
            assert service.totals.rounds > 2 * (n - 5)

    asyncio.run(scenario())


def test_after_a_restart_the_timeline_comes_from_the_history_and_catch_up_is_causal(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    n = 40
    a, b = planted_market(n, 2, seed=2, symbol=A), planted_market(n, 2, seed=4, symbol=B)
    _install(tmp_path)
    cfg = make_config(redis_url, tmp_path)

    async def first_run() -> None:
        async with inference(cfg, FAMILIES) as (service, store):
            await _feed_a_ahead_of_b(service, store, a, b)

    asyncio.run(first_run())
    rounds = _history(redis_client)
    assert len(rounds) > 30

    async def after_restart() -> None:
        async with inference(cfg, FAMILIES) as (service, store):
            await service.recover()
            for t in range(n):
                close = int(a.ts[t]) + H
                assert dict(service.timeline.at(close)) == _as_of(rounds, close)
            store.insert_bars([bar_at(b, t) for t in range(4, n)])
            service.bars_stored(B, TF, n - 4)
            await service.run_until_idle()

    asyncio.run(after_restart())
    _check_causal(redis_client, tmp_path, rounds, int(b.ts[4]))
