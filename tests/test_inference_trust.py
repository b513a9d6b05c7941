"""Live inference drives trust memory on a real Redis: planted experts that
know the future win the weights and the weights follow them when the
advantage moves; the keys are exactly the contract's; a replayed bar moves
no weight twice."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from pathlib import Path

import pytest
import redis

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.core.trust import recovery_rounds
from quantum_daemon.domain.config import TrustConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.storage.prediction_records import RECORDS_FILE
from tests.inference_helpers import FAMILIES, Feeder, inference, make_config
from tests.planted_family import brier_gap, install_version, planted_market

KEYS = Keys()
SYMBOL, TF = "TESTUSDT", "1h"
FORECASTERS = ("xgb", "lgbm", "nhits", "patchtst")


def weights_of(client: redis.Redis, families: tuple[str, ...]) -> dict[str, float]:
    values = client.mget([KEYS.trust(f) for f in families])
    return {f: float(v) for f, v in zip(families, values, strict=True) if v is not None}


def test_weights_concentrate_on_the_planted_family_and_follow_it_when_it_moves(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    horizon, n, switch = 2, 230, 110
    bars = planted_market(n, horizon, seed=3)
    switch_ts = int(bars.ts[switch])
    install_version(tmp_path, "lgbm", {"until_ts": 0, "seed": 1})  # guessers throughout
    install_version(tmp_path, "patchtst", {"until_ts": 0, "seed": 2})
    install_version(tmp_path, "nhits", {"until_ts": switch_ts, "seed": 3})  # the oracle, then not
    install_version(tmp_path, "xgb", {"from_ts": switch_ts, "seed": 4})  # not, then the oracle
    cfg = make_config(redis_url, tmp_path, horizon=horizon)
    seen: list[dict[str, float]] = []

    async def check(feeder: Feeder) -> None:
        weights = weights_of(redis_client, FORECASTERS)
        assert set(weights) == set(FORECASTERS)
        assert all(w > 0 for w in weights.values())
        assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-12)
        assert all(redis_client.xlen(KEYS.trust_events(f)) <= 100 for f in FORECASTERS)
        seen.append(weights)

    async def scenario() -> None:
        async with inference(cfg, FORECASTERS) as (service, store):
            feeder = Feeder(service, store, bars, after_each=[check])
            await feeder.feed(switch + horizon)
            assert seen[-1]["nhits"] > 0.9  # the oracle's scores have all come in
            await feeder.feed(n)

    asyncio.run(scenario())
    # the xgb oracle's first score lands with bar switch + horizon
    followed = next(k for k, w in enumerate(seen) if k >= switch + horizon and w["xgb"] >= 0.5) - (
        switch + horizon
    )
    eta, alpha = TrustConfig().learning_rate, TrustConfig().share
    bound = recovery_rounds(eta, alpha, len(FORECASTERS), brier_gap())
    assert followed <= bound < 60
    assert seen[-1]["xgb"] > 0.9
    assert all(redis_client.xlen(KEYS.trust_events(f)) == 100 for f in FORECASTERS)


def trust_state(client: redis.Redis) -> tuple[object, ...]:
    return (
        client.mget([KEYS.trust(f) for f in FAMILIES]),
        client.hgetall(KEYS.trust_history),
        [client.xrange(KEYS.trust_events(f)) for f in FAMILIES],
        client.zrange(KEYS.scored, 0, -1),
    )


def test_six_families_keep_the_contracts_keys_and_a_replay_scores_nothing_twice(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    horizon, n = 2, 130
    bars = planted_market(n, horizon, seed=5)
    for seed, family in enumerate(FORECASTERS):
        install_version(tmp_path, family, {"seed": seed, "until_ts": 0 if seed else 2**62})
    install_version(tmp_path, "evo_model", {"positions": True, "until_ts": 0, "seed": 7})
    install_version(tmp_path, "rl_sizer", {"positions": True})
    cfg = make_config(redis_url, tmp_path, horizon=horizon)

    async def first_run() -> None:
        async with inference(cfg) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(10)
            await service.run_until_idle()
            await feeder.feed(n)

    asyncio.run(first_run())
    found = {k: redis_client.type(k) for k in redis_client.scan_iter("quantum:trust*")}
    expected = (
        {KEYS.trust(f): "string" for f in FAMILIES}
        | {KEYS.trust_series(f, SYMBOL, TF): "string" for f in FAMILIES}
        | {KEYS.trust_events(f): "stream" for f in FAMILIES}
        | {KEYS.trust_history: "hash"}
    )
    assert found == expected
    assert redis_client.type(KEYS.scored) == "zset"  # the idempotency set, outside trust:
    assert set(redis_client.hkeys(KEYS.trust_history)) == set(FAMILIES)
    assert all(redis_client.xlen(KEYS.trust_events(f)) == 100 for f in FAMILIES)
    weights = weights_of(redis_client, FAMILIES)
    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-12)
    assert max(weights, key=weights.__getitem__) == "xgb"  # the one oracle among them

    signals = [parse_signal(f) for _, f in redis_client.xrange(KEYS.signals(SYMBOL, TF))]
    assert [s.ts for s in signals] == [int(t) for t in bars.ts[9:n]]  # one per bar answered
    assert {s.position_source for s in signals} == {"rl_sizer"}
    assert {c.family for c in signals[-1].contributions} == {*FORECASTERS, "evo_model"}

    before = trust_state(redis_client)
    # a crash after the trust rounds but before the records were marked: every
    # prediction is pending again, and settling them again changes nothing
    with sqlite3.connect(tmp_path / RECORDS_FILE) as conn:
        conn.execute("UPDATE predictions SET status = 'pending', loss = NULL")
    pending = _count_pending(tmp_path)
    assert pending > 600

    async def replay() -> None:
        async with inference(cfg) as (service, _):
            await service.run_until_idle()
            service.bars_stored(SYMBOL, TF, 1)  # a re-delivered bar: nothing newer is stored
            await service.run_until_idle()
            await service.score_series(SYMBOL, TF, int(bars.ts[n - 1]))
            assert service.totals.signals == 0

    asyncio.run(replay())
    assert trust_state(redis_client) == before
    assert _count_pending(tmp_path) < pending
    assert redis_client.xlen(KEYS.signals(SYMBOL, TF)) == len(signals)


def _count_pending(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / RECORDS_FILE) as conn:
        return int(
            conn.execute("SELECT COUNT(*) FROM predictions WHERE status = 'pending'").fetchone()[0]
        )


def test_history_is_json_pairs_of_round_time_and_weight(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bars = planted_market(40, 2, seed=1)
    install_version(tmp_path, "xgb", {})
    install_version(tmp_path, "lgbm", {"until_ts": 0})
    cfg = make_config(redis_url, tmp_path)

    async def scenario() -> None:
        async with inference(cfg, ("xgb", "lgbm")) as (service, store):
            await Feeder(service, store, bars).feed(40)

    asyncio.run(scenario())
    history = json.loads(redis_client.hget(KEYS.trust_history, "xgb"))
    times = [ts for ts, _ in history]
    assert times == sorted(times)
    assert history[-1][1] == pytest.approx(float(redis_client.get(KEYS.trust("xgb"))))
    assert times[-1] == int(bars.ts[39]) + 3_600_000  # the round of the last bar, at its close


def test_the_published_signal_is_the_ensemble_the_sizer_sized_when_a_round_lands_meanwhile(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The sizer is trained on the recorded signal (``recorded_signals``), so
    what is published must be what the live sizer sized: the pool under the
    weights sent with the request, even when a trust round (bookkeeping, on
    the same loop) moves the weights while the worker answers."""
    horizon = 2
    bars = planted_market(20, horizon, seed=8)
    install_version(tmp_path, "xgb", {})  # the oracle
    install_version(tmp_path, "lgbm", {"until_ts": 0, "seed": 1})  # a guesser
    install_version(tmp_path, "rl_sizer", {"positions": True})
    cfg = make_config(redis_url, tmp_path, horizon=horizon)

    async def scenario() -> None:
        async with inference(cfg, ("xgb", "lgbm", "rl_sizer")) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(5)
            await service.run_until_idle()
            feeder.store_until(6)
            serving = asyncio.ensure_future(service.serve_next())
            await asyncio.sleep(0)  # the request is on the pipe
            service.weights = {"xgb": 0.9, "lgbm": 0.1}  # what a trust round does meanwhile
            await serving
            await service.run_until_idle()

    asyncio.run(scenario())
    last = parse_signal(redis_client.xrevrange(KEYS.signals(SYMBOL, TF), count=1)[0][1])
    assert last.ts == int(bars.ts[5])
    with sqlite3.connect(tmp_path / RECORDS_FILE) as conn:
        sized = conn.execute(
            "SELECT mu, p_up FROM predictions WHERE family = 'rl_sizer' AND ts = ?", (last.ts,)
        ).fetchone()
    assert (last.mu, last.p_up) == tuple(sized)
    assert last.position_source == "rl_sizer"
