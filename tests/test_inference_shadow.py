"""Candidates predict in shadow: scored like the active versions, moving no
weight, and promoted (reason ``shadow``, the old version retired) once their
live record beats the active one over ``shadow_min_bars`` bars."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import redis

from quantum_daemon.ensemble import parse_signal
from quantum_daemon.events import parse_entry
from quantum_daemon.keys import Keys
from quantum_daemon.registry import Registry
from tests.inference_helpers import Feeder, inference, make_config
from tests.planted_family import install_version, planted_market

KEYS = Keys()
MODEL = "xgb_TESTUSDT_1h"


def test_a_candidate_that_beats_the_active_version_live_is_promoted(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    horizon, min_bars = 2, 12
    bars = planted_market(60, horizon, seed=2)
    old = install_version(tmp_path, "xgb", {"until_ts": 0, "seed": 1})
    install_version(tmp_path, "lgbm", {"until_ts": 0, "seed": 2})
    new = install_version(tmp_path, "xgb", {}, stage="candidate")  # the oracle, in shadow
    loser = install_version(tmp_path, "lgbm", {"until_ts": 0, "seed": 9}, stage="candidate")
    cfg = make_config(redis_url, tmp_path, horizon=horizon, shadow_min_bars=min_bars)
    registry = Registry(tmp_path)
    xgb_weights: list[float] = []

    async def scenario() -> None:
        async with inference(cfg, ("xgb", "lgbm")) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(5)
            await service.run_until_idle()
            while registry.active_version(MODEL) == old:
                assert feeder.fed < 40, "the candidate was never promoted"
                await feeder.feed(feeder.fed + 1)
                xgb_weights.append(float(redis_client.get(KEYS.trust("xgb"))))
            promoted_at = feeder.fed
            await feeder.feed(promoted_at + 3)
            assert {(m.model_id, m.version, m.stage) for m in service.loaded} >= {
                (MODEL, new, "active")
            }
            assert not any(m.model_id == MODEL and m.stage == "candidate" for m in service.loaded)
            assert service.totals.promotions == 1

    asyncio.run(scenario())
    assert registry.stage(MODEL, old) == "retired"
    assert registry.stage("lgbm_TESTUSDT_1h", loser) == "candidate"  # it lost: still in shadow
    events = [parse_entry(f) for _, f in redis_client.xrange(KEYS.events)]
    [promoted] = [e for e in events if e.type == "model.promoted"]
    assert promoted.data["reason"] == "shadow"
    assert (promoted.data["from"], promoted.data["to"]) == (old, new)
    assert any(e.type == "model.retired" and e.data["version"] == old for e in events)
    pending = {e.event_id for e in registry.pending_events()}
    assert promoted.event_id not in pending  # published and confirmed
    # while in shadow the oracle moved no weight: xgb's weight fell with its guessing active
    assert xgb_weights[-1] < 0.5
    last = parse_signal(redis_client.xrevrange(KEYS.signals("TESTUSDT", "1h"), count=1)[0][1])
    assert last.versions["xgb"] == new


def test_shadow_records_need_shadow_min_bars_common_bars(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    horizon, min_bars = 2, 30
    bars = planted_market(30, horizon, seed=4)
    old = install_version(tmp_path, "xgb", {"until_ts": 0, "seed": 1})
    install_version(tmp_path, "xgb", {}, stage="candidate")
    cfg = make_config(redis_url, tmp_path, horizon=horizon, shadow_min_bars=min_bars)

    async def scenario() -> None:
        async with inference(cfg, ("xgb",)) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(2)
            await feeder.feed(30)
            assert service.totals.scored > 40

    asyncio.run(scenario())
    assert Registry(tmp_path).active_version(MODEL) == old  # fewer than 30 scored bars
    events = [json.loads(f["data"]) for _, f in redis_client.xrange(KEYS.events)]
    assert not any(e.get("reason") == "shadow" for e in events)
