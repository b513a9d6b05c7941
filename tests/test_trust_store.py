"""Trust memory on a real Redis: keys, bounded streams, idempotent replays,
and weights that follow a planted, always-right family."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from quantum_daemon.core.evaluation.backtest import cost_rate
from quantum_daemon.core.scoring import return_scale, score_forecast, score_position
from quantum_daemon.core.trust import recovery_rounds
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import FAMILIES, TrustConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.storage.trust_store import Score, TrustStore
from tests.conftest import make_bars

T = TypeVar("T")
KEYS = Keys()
FORECASTERS = ("xgb", "lgbm", "nhits", "patchtst")
POSITIONERS = ("evo_model", "rl_sizer")
RATE = cost_rate(10.0, 2.0)


def run(redis_url: str, scenario: Callable[[TrustStore], Awaitable[T]], **config: int) -> T:
    """Run ``scenario`` against a TrustStore on its own event loop and client."""

    async def main() -> T:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await scenario(TrustStore(client, KEYS, TrustConfig(**config)))
        finally:
            await client.aclose()

    return asyncio.run(main())


@dataclass(frozen=True)
class Market:
    """Synthetic bars and every family's predictions at every decision bar."""

    bars: Bars
    horizon: int
    p_up: dict[str, np.ndarray]  # forecasters
    positions: dict[str, np.ndarray]  # position families
    plain: np.ndarray  # the plain rule's position

    def scores_at(self, t: int) -> list[Score]:
        """Every score whose outcome is known at the close of bar ``t``."""
        scores: list[Score] = []
        d = t - self.horizon
        if d >= 0:
            realized = math.log(self.bars.close[t] / self.bars.close[d])
            for family, p in self.p_up.items():
                loss = score_forecast(0.0, float(p[d]), realized).loss
                scores.append(self._score(family, d, loss))
        d = t - 1
        if d >= 1 and self.positions:
            asset = self.bars.close[t] / self.bars.close[d] - 1
            scale = return_scale(self.bars.close[: d + 1])
            plain = (self.plain[d - 1], self.plain[d])
            for family, pos in self.positions.items():
                own = (float(pos[d - 1]), float(pos[d]))
                scores.append(
                    self._score(family, d, score_position(own, plain, asset, RATE, scale).loss)
                )
        return scores

    def _score(self, family: str, d: int, loss: float) -> Score:
        model = f"{family}_{self.bars.symbol}_{self.bars.tf}"
        return Score(
            family, model, "v20260101_000000", self.bars.symbol, int(self.bars.ts[d]), loss
        )


def noisy_market(n: int, horizon: int = 4, seed: int = 0) -> Market:
    rng = np.random.default_rng(seed)
    bars = make_bars(n, seed=seed)
    p_up = {f: rng.uniform(0.3, 0.7, n) for f in FORECASTERS}
    positions = {f: rng.choice([-1.0, 0.0, 1.0], n) for f in POSITIONERS}
    plain = rng.choice([-1.0, 0.0, 1.0], n)
    return Market(bars, horizon, p_up, positions, plain)


def planted_market(n: int, switch: int, horizon: int, seed: int = 0) -> Market:
    """Six forecasters guessing within [0.4, 0.6], except one that knows the
    outcome (p_up 0.95 on the side that happens): ``nhits`` before decision
    ``switch``, ``xgb`` from it on. Its Brier score is at most 0.0025, every
    other one at least 0.16."""
    rng = np.random.default_rng(seed)
    bars = make_bars(n, seed=seed)
    up = np.zeros(n, dtype=bool)
    up[:-horizon] = bars.close[horizon:] > bars.close[:-horizon]
    knows = np.where(up, 0.95, 0.05)
    p_up = {f: rng.uniform(0.4, 0.6, n) for f in FAMILIES}
    p_up["nhits"] = np.where(np.arange(n) < switch, knows, p_up["nhits"])
    p_up["xgb"] = np.where(np.arange(n) >= switch, knows, p_up["xgb"])
    return Market(bars, horizon, p_up, {}, np.zeros(n))


async def replay(store: TrustStore, market: Market, start: int, stop: int) -> None:
    for t in range(start, stop):
        await store.apply(market.scores_at(t), FAMILIES, int(market.bars.ts[t]))


def test_trust_keys_exactly_as_specified_after_a_replay(
    redis_url: str, redis_client: redis.Redis
) -> None:
    market = noisy_market(160)

    async def scenario(store: TrustStore) -> None:
        for t in range(len(market.bars)):
            await store.apply(market.scores_at(t), FAMILIES, int(market.bars.ts[t]))
            for family in FAMILIES:
                assert await store.client.xlen(KEYS.trust_events(family)) <= 100

    run(redis_url, scenario, history_len=50)
    symbol, tf = market.bars.symbol, market.bars.tf
    expected = (
        {KEYS.trust(f): "string" for f in FAMILIES}
        | {KEYS.trust_series(f, symbol, tf): "string" for f in FAMILIES}
        | {KEYS.trust_events(f): "stream" for f in FAMILIES}
        | {KEYS.trust_history: "hash", KEYS.scored: "zset"}
    )
    found = {k: redis_client.type(k) for k in redis_client.scan_iter("quantum:*")}
    assert found == expected
    assert set(redis_client.hkeys(KEYS.trust_history)) == set(FAMILIES)
    for family in FAMILIES:
        assert redis_client.xlen(KEYS.trust_events(family)) == 100
        history = json.loads(redis_client.hget(KEYS.trust_history, family))
        assert [ts for ts, _ in history] == [int(ts) for ts in market.bars.ts[-50:]]
        assert history[-1][1] == float(redis_client.get(KEYS.trust(family)))


def test_weights_stay_positive_and_sum_to_one(redis_url: str) -> None:
    market = noisy_market(80)

    async def scenario(store: TrustStore) -> None:
        for t in range(len(market.bars)):
            await store.apply(market.scores_at(t), FAMILIES, int(market.bars.ts[t]))
            weights = await store.weights()
            assert set(weights) == set(FAMILIES)
            assert all(w > 0 for w in weights.values())
            assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-12)

    run(redis_url, scenario)


def test_a_replayed_bar_changes_no_weight_twice(redis_url: str, redis_client: redis.Redis) -> None:
    market = noisy_market(60)

    def state() -> tuple[object, ...]:
        return (
            redis_client.mget([KEYS.trust(f) for f in FAMILIES]),
            redis_client.hgetall(KEYS.trust_history),
            [redis_client.xrange(KEYS.trust_events(f)) for f in FAMILIES],
            redis_client.zrange(KEYS.scored, 0, -1),
        )

    run(redis_url, lambda store: replay(store, market, 0, 60))
    first = state()
    rounds = run(redis_url, lambda store: replay_rounds(store, market, 0, 60))
    assert all(not r.fresh and not r.changed for r in rounds)
    assert state() == first
    # a replayed bar with other values (a model that now says something else) is still ignored
    altered = [
        Score(s.family, s.model, s.version, s.symbol, s.bar_ts, 1.0 - s.loss)
        for s in market.scores_at(30)
    ]
    run(redis_url, lambda store: store.apply(altered, FAMILIES, int(market.bars.ts[59])))
    assert state() == first


async def replay_rounds(store: TrustStore, market: Market, start: int, stop: int) -> list:
    return [
        await store.apply(market.scores_at(t), FAMILIES, int(market.bars.ts[t]))
        for t in range(start, stop)
    ]


def test_events_record_the_loss_and_the_weights_around_it(redis_url: str) -> None:
    market = noisy_market(20)

    async def scenario(store: TrustStore) -> None:
        rounds = await replay_rounds(store, market, 0, 20)
        last = rounds[-1]
        weights = await store.weights()
        for family in FAMILIES:
            [event] = await store.events(family, count=1)
            [score] = [s for s in last.fresh if s.family == family]
            assert (event.bar_ts, event.model, event.version) == (
                score.bar_ts,
                score.model,
                score.version,
            )
            assert event.loss == score.loss == event.round_loss
            assert event.weight_before == pytest.approx(last.before[family])
            assert event.weight_after == weights[family] == last.after[family]

    run(redis_url, scenario)


def test_weights_concentrate_on_a_planted_family_and_follow_it_when_it_moves(
    redis_url: str,
) -> None:
    n, switch, horizon = 400, 200, 4
    market = planted_market(n, switch, horizon)
    bound = recovery_rounds(2.0, 0.05, len(FAMILIES), gap=0.16 - 0.0025)

    async def scenario(store: TrustStore) -> int:
        await replay(store, market, 0, switch + horizon)
        weights = await store.weights()
        assert weights["nhits"] > 0.9
        for t in range(switch + horizon, n):
            await store.apply(market.scores_at(t), FAMILIES, int(market.bars.ts[t]))
            if (await store.weights())["xgb"] >= 0.5:
                return t - (switch + horizon) + 1
        return n

    rounds_to_follow = run(redis_url, scenario)
    assert rounds_to_follow <= bound
    assert bound < 60  # the guarantee is a handful of bars, not the length of the old regime


def test_shadow_scores_are_marked_but_move_no_weight(
    redis_url: str, redis_client: redis.Redis
) -> None:
    shadow = Score("xgb", "xgb_BTCUSDT_1h", "v2", "BTCUSDT", 1_000, 0.0, shadow=True)

    async def scenario(store: TrustStore) -> None:
        await store.set_live(FAMILIES, 0)
        before = await store.weights()
        result = await store.apply([shadow], FAMILIES, 3_600_000)
        assert result.fresh == (shadow,) and not result.changed
        assert await store.weights() == before

    run(redis_url, scenario)
    assert redis_client.zscore(KEYS.scored, shadow.member) == 1_000
    assert redis_client.xlen(KEYS.trust_events("xgb")) == 0


def test_families_join_and_leave(redis_url: str, redis_client: redis.Redis) -> None:
    async def scenario(store: TrustStore) -> None:
        await store.set_live(["xgb", "lgbm"], 0)
        scores = [
            Score(f, f, "v1", "BTCUSDT", 0, loss) for f, loss in (("xgb", 0.0), ("lgbm", 1.0))
        ]
        await store.apply(scores, ["xgb", "lgbm"], 1)
        weights = await store.weights()
        assert weights["xgb"] > weights["lgbm"]
        await store.set_live(["xgb", "lgbm", "nhits", "patchtst"], 2)
        joined = await store.weights()
        assert joined["nhits"] == joined["patchtst"] == pytest.approx(0.25)
        assert joined["xgb"] / joined["lgbm"] == pytest.approx(weights["xgb"] / weights["lgbm"])
        await store.set_live(["xgb", "nhits"], 3)
        left = await store.weights()
        assert set(left) == {"xgb", "nhits"}
        assert math.fsum(left.values()) == pytest.approx(1.0)

    run(redis_url, scenario)
    assert redis_client.get(KEYS.trust("lgbm")) is None
    assert redis_client.hexists(KEYS.trust_history, "lgbm")  # its past stays readable


def test_concurrent_rounds_both_land(redis_url: str, redis_client: redis.Redis) -> None:
    """Two writers (two daemons) racing on the same keys: WATCH makes the loser
    retry; no round is lost or applied twice."""

    async def writer(family: str) -> None:
        client = aioredis.Redis.from_url(redis_url)
        store = TrustStore(client, KEYS, TrustConfig())
        try:
            for ts in range(1, 21):
                await store.apply([Score(family, family, "v1", "X", ts, 0.1)], FAMILIES, ts)
        finally:
            await client.aclose()

    async def scenario() -> None:
        await asyncio.gather(writer("xgb"), writer("lgbm"))

    asyncio.run(scenario())
    assert redis_client.zcard(KEYS.scored) == 40
    assert redis_client.xlen(KEYS.trust_events("xgb")) == 20
    assert redis_client.xlen(KEYS.trust_events("lgbm")) == 20
    weights = [float(w) for w in redis_client.mget([KEYS.trust(f) for f in FAMILIES])]
    assert math.fsum(weights) == pytest.approx(1.0)


def test_two_daemons_scoring_their_own_series_overwrite_no_trust_key(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Each series' weights move by its own scores only; the aggregate by
    all of them; two writers on two series at once lose nothing."""
    live = ("xgb", "lgbm")

    def score(family: str, symbol: str, ts: int, loss: float) -> Score:
        return Score(family, f"{family}_{symbol}_1h", "v1", symbol, ts, loss)

    async def writer(symbol: str, good: str) -> None:
        client = aioredis.Redis.from_url(redis_url)
        store = TrustStore(client, KEYS, TrustConfig())
        try:
            for ts in range(1, 31):
                scores = [score(f, symbol, ts, 0.05 if f == good else 0.6) for f in live]
                await store.apply(scores, live, ts)
        finally:
            await client.aclose()

    async def scenario() -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        await asyncio.gather(writer("AAAUSDT", "xgb"), writer("BBBUSDT", "lgbm"))
        client = aioredis.Redis.from_url(redis_url)
        store = TrustStore(client, KEYS, TrustConfig())
        try:
            return (
                await store.series_weights("AAAUSDT", "1h"),
                await store.series_weights("BBBUSDT", "1h"),
                await store.weights(),
            )
        finally:
            await client.aclose()

    a, b, aggregate = asyncio.run(scenario())
    assert a["xgb"] > 0.9 and b["lgbm"] > 0.9  # each series follows its own best family
    assert a["xgb"] == pytest.approx(b["lgbm"])  # mirror images: the same 30 rounds each
    assert math.fsum(aggregate.values()) == pytest.approx(1.0)
    assert redis_client.zcard(KEYS.scored) == 120  # every score applied once
    assert redis_client.xlen(KEYS.trust_events("xgb")) == 60


def test_scores_older_than_the_retention_window_count_as_scored(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(store: TrustStore) -> None:
        store.retention_ms = 10_000
        await store.apply([Score("xgb", "m", "v1", "X", 100_000, 0.2)], FAMILIES, 100_000)
        stale = await store.apply([Score("xgb", "m", "v1", "X", 50_000, 0.2)], FAMILIES, 100_001)
        assert not stale.fresh and len(stale.duplicates) == 1
        await store.apply([Score("xgb", "m", "v1", "X", 200_000, 0.2)], FAMILIES, 200_000)

    run(redis_url, scenario)
    assert redis_client.zrange(KEYS.scored, 0, -1) == ["m|v1|X|200000"]


def test_unknown_families_are_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="unknown families"):
        run(redis_url, lambda store: store.apply([], ["prophet"], 0))


def test_snapshot_serves_weights_history_and_events_as_json(redis_url: str) -> None:
    market = noisy_market(12)

    async def scenario(store: TrustStore) -> dict:
        await replay(store, market, 0, 12)
        return (await store.snapshot(events_per_family=3)).as_json()

    snapshot = run(redis_url, scenario)
    assert set(snapshot["weights"]) == set(FAMILIES)
    assert snapshot["history"]["xgb"][-1] == [int(market.bars.ts[11]), snapshot["weights"]["xgb"]]
    assert len(snapshot["events"]["xgb"]) == 3
    assert json.dumps(snapshot)
