"""Candidates predict in shadow: scored like the active versions, moving no
weight, and promoted (reason ``shadow``, the old version retired) once their
live record beats the active one over ``shadow_min_bars`` bars. Several
candidates of a model share the shadow (the best winner is promoted, the
others face the new active version), a candidate not ahead after
``shadow_max_bars`` bars is retired, and candidates beyond
``[inference] max_candidates`` are retired as superseded; every event
exactly once, even when a round is replayed."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import redis

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.domain.events import Event
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference import InferenceService
from quantum_daemon.inference.messages import LoadedModel
from quantum_daemon.storage.events import parse_entry
from quantum_daemon.storage.registry.registry import Registry
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


def transitions(client: redis.Redis) -> list[tuple[str, str, str]]:
    """(type, version, reason) of every promotion and retirement on the events stream."""
    events: list[Event] = [parse_entry(f) for _, f in client.xrange(KEYS.events)]
    return [
        (e.type, str(e.data["version"]), str(e.data["reason"]))
        for e in events
        if e.type in ("model.promoted", "model.retired")
    ]


def held(service: InferenceService) -> set[tuple[str, str]]:
    """(version, stage) of the xgb model's versions the worker holds."""
    return {(m.version, m.stage) for m in service.loaded if m.model_id == MODEL}


async def replay(service: InferenceService, stale: tuple[LoadedModel, ...]) -> None:
    """Judge the shadow again as if the worker still held ``stale``."""
    service.loaded = stale
    await service._judge_shadow([MODEL])
    await service._retire_superseded()


def test_of_two_winning_candidates_the_better_is_promoted_and_the_other_faces_it(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    horizon, min_bars, max_bars = 2, 8, 20
    bars = planted_market(60, horizon, seed=5)
    old = install_version(tmp_path, "xgb", {"until_ts": 0, "seed": 1})
    oracle = install_version(tmp_path, "xgb", {}, stage="candidate")
    # guesses on its first two scored bars, then knows the future: it beats the
    # guessing active version, never the oracle
    late = install_version(tmp_path, "xgb", {"from_ts": int(bars.ts[6])}, stage="candidate")
    cfg = make_config(
        redis_url, tmp_path, horizon=horizon, shadow_min_bars=min_bars, shadow_max_bars=max_bars
    )
    registry = Registry(tmp_path)

    async def scenario() -> None:
        async with inference(cfg, ("xgb",)) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(5)
            await service.run_until_idle()
            stale = service.loaded
            assert held(service) == {(old, "active"), (oracle, "candidate"), (late, "candidate")}
            while registry.active_version(MODEL) == old:
                assert feeder.fed < 30, "no candidate was promoted"
                await feeder.feed(feeder.fed + 1)
            assert registry.stage(MODEL, late) == "candidate"  # a winner too, but not the best
            while registry.stage(MODEL, late) == "candidate":
                assert feeder.fed < 50, "the second candidate was never judged out"
                await feeder.feed(feeder.fed + 1)
            await feeder.feed(feeder.fed + 2)
            assert held(service) == {(oracle, "active")}  # the retired candidate is unloaded
            assert (service.totals.promotions, service.totals.shadow_retired) == (1, 1)
            await replay(service, stale)
            assert (service.totals.promotions, service.totals.shadow_retired) == (1, 1)

    asyncio.run(scenario())
    assert transitions(redis_client) == [
        ("model.retired", old, f"replaced by {oracle}"),
        ("model.promoted", oracle, "shadow"),
        ("model.retired", late, "shadow"),
    ]
    events = [parse_entry(f) for _, f in redis_client.xrange(KEYS.events)]
    [expired] = [e for e in events if e.type == "model.retired" and e.data["version"] == late]
    assert f"of {oracle} over {max_bars} common bars" in expired.data["detail"]
    pending = {e.event_id for e in registry.pending_events()}
    shadow = [e for e in events if e.data.get("reason") == "shadow"]
    assert len(shadow) == 2 and not pending & {e.event_id for e in shadow}  # confirmed


def test_a_candidate_not_ahead_after_shadow_max_bars_is_retired(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    horizon, min_bars, max_bars = 2, 4, 10
    bars = planted_market(40, horizon, seed=6)
    active = install_version(tmp_path, "xgb", {})
    loser = install_version(tmp_path, "xgb", {"until_ts": 0, "seed": 3}, stage="candidate")
    cfg = make_config(
        redis_url, tmp_path, horizon=horizon, shadow_min_bars=min_bars, shadow_max_bars=max_bars
    )
    registry = Registry(tmp_path)

    async def scenario() -> None:
        async with inference(cfg, ("xgb",)) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(5)
            await service.run_until_idle()
            stale = service.loaded
            while registry.stage(MODEL, loser) == "candidate":
                assert feeder.fed < 30, "the losing candidate was never retired"
                await feeder.feed(feeder.fed + 1)
            await feeder.feed(feeder.fed + 2)
            assert held(service) == {(active, "active")}
            await replay(service, stale)
            assert service.totals.shadow_retired == 1

    asyncio.run(scenario())
    assert registry.active_version(MODEL) == active
    assert transitions(redis_client) == [("model.retired", loser, "shadow")]
    [retired] = [
        parse_entry(f)
        for _, f in redis_client.xrange(KEYS.events)
        if parse_entry(f).type == "model.retired"
    ]
    assert f"over {max_bars} common bars" in retired.data["detail"]
    assert retired.data["detail"].startswith("mean loss 0.")


def test_candidates_beyond_max_candidates_are_retired_as_superseded(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bars = planted_market(30, 2, seed=7)
    install_version(tmp_path, "xgb", {})
    first, second, third = (
        install_version(tmp_path, "xgb", {"until_ts": 0, "seed": s}, stage="candidate")
        for s in (2, 3, 4)
    )
    cfg = make_config(redis_url, tmp_path, shadow_min_bars=48)
    registry = Registry(tmp_path)

    async def scenario() -> None:
        async with inference(cfg, ("xgb",)) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(5)
            await service.run_until_idle()
            assert {v for v, stage in held(service) if stage == "candidate"} == {second, third}
            assert registry.stage(MODEL, first) == "retired"
            stale = service.loaded
            fourth = install_version(tmp_path, "xgb", {"seed": 5}, stage="candidate")
            await feeder.feed(8)
            assert {v for v, stage in held(service) if stage == "candidate"} == {third, fourth}
            assert registry.stage(MODEL, second) == "retired"
            await replay(service, stale)
            assert service.totals.superseded == 2

    asyncio.run(scenario())
    assert transitions(redis_client) == [
        ("model.retired", first, "superseded"),
        ("model.retired", second, "superseded"),
    ]
    assert registry.stage(MODEL, third) == "candidate"


def test_an_expiry_judged_against_a_version_an_operator_replaced_changes_nothing(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The operator promotes another version after the worker answered a bar
    and before bookkeeping scored it: the round still sees the old active
    version. The candidate's record against it ran out in that round, but it
    is no longer the active version: the candidate stays, to face the new one."""
    horizon, fed, max_bars = 2, 14, 9  # the 9th common bar is scored with bar 14
    bars = planted_market(30, horizon, seed=9)
    earlier = install_version(tmp_path, "xgb", {"until_ts": 0, "seed": 4}, stage="candidate")
    registry = Registry(tmp_path)
    registry.retire(MODEL, earlier, "planted: an earlier version")
    active = install_version(tmp_path, "xgb", {})  # the oracle: the candidate never beats it
    loser = install_version(tmp_path, "xgb", {"until_ts": 0, "seed": 3}, stage="candidate")
    cfg = make_config(
        redis_url, tmp_path, horizon=horizon, shadow_min_bars=4, shadow_max_bars=max_bars
    )

    async def scenario() -> None:
        async with inference(cfg, ("xgb",)) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(5)
            await service.run_until_idle()
            await feeder.feed(fed)
            assert held(service) == {(active, "active"), (loser, "candidate")}
            feeder.store_until(fed + 1)
            await service.serve_next()  # answered; its bookkeeping is still queued
            registry.promote(MODEL, earlier, "operator: back to the earlier version")
            await service.run_until_idle()
            record = await service._in_io(service.records.losses, MODEL, loser)
            against = await service._in_io(service.records.losses, MODEL, active)
            assert len(set(record) & set(against)) == max_bars  # its record ran out
            assert registry.stage(MODEL, loser) == "candidate"
            await feeder.feed(fed + 3)
            assert held(service) == {(earlier, "active"), (loser, "candidate")}

    asyncio.run(scenario())
    assert registry.stage(MODEL, loser) == "candidate"
    assert service_shadow_events(redis_client) == []


def service_shadow_events(client: redis.Redis) -> list[tuple[str, str]]:
    """(type, version) of the events with reason ``shadow`` on the stream."""
    events = [parse_entry(f) for _, f in client.xrange(KEYS.events)]
    return [(e.type, str(e.data["version"])) for e in events if e.data.get("reason") == "shadow"]


def test_a_model_removed_by_hand_mid_shadow_does_not_stop_the_bookkeeping(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The model's folder is deleted after the worker answered a bar and
    before bookkeeping scored it: the expiry that round decides finds no
    such version in the registry. That is logged, as for a promotion; the
    bookkeeping loop (an exception there stops the daemon) goes on."""
    horizon, fed, max_bars = 2, 14, 9  # the 9th common bar is scored with bar 14
    bars = planted_market(30, horizon, seed=10)
    install_version(tmp_path, "xgb", {})
    loser = install_version(tmp_path, "xgb", {"until_ts": 0, "seed": 3}, stage="candidate")
    install_version(tmp_path, "lgbm", {"until_ts": 0, "seed": 2})
    cfg = make_config(
        redis_url, tmp_path, horizon=horizon, shadow_min_bars=4, shadow_max_bars=max_bars
    )

    async def scenario() -> None:
        async with inference(cfg, ("xgb", "lgbm")) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(5)
            await service.run_until_idle()
            await feeder.feed(fed)
            assert (loser, "candidate") in held(service)
            feeder.store_until(fed + 1)
            await service.serve_next()  # answered; its bookkeeping is still queued
            shutil.rmtree(tmp_path / "models" / MODEL)
            await service.run_until_idle()
            await feeder.feed(fed + 3)
            assert held(service) == set()
            assert {m.family for m in service.loaded} == {"lgbm"}
            assert service.totals.shadow_retired == 0

    asyncio.run(scenario())
    assert redis_client.xlen(KEYS.signals("TESTUSDT", "1h")) == fed + 3 - 4


def test_a_restart_mid_shadow_resumes_the_comparison_from_the_records(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The live records are in predictions.sqlite3: after a restart the
    candidate's comparison goes on from the bars scored before it, and the
    promotion's events go out once."""
    horizon, min_bars = 2, 10
    bars = planted_market(40, horizon, seed=11)
    old = install_version(tmp_path, "xgb", {"until_ts": 0, "seed": 1})
    new = install_version(tmp_path, "xgb", {}, stage="candidate")
    cfg = make_config(redis_url, tmp_path, horizon=horizon, shadow_min_bars=min_bars)
    registry = Registry(tmp_path)
    fed = 5

    async def run(until: int | None) -> int:
        async with inference(cfg, ("xgb",)) as (service, store):
            feeder = Feeder(service, store, bars, fed=fed)
            if until is not None:  # the first run: stop before the record is long enough
                feeder.store_until(until)
                await service.run_until_idle()
                await feeder.feed(until + min_bars - 2)
                return feeder.fed
            while registry.active_version(MODEL) == old:
                assert feeder.fed < 30, "the candidate was never promoted"
                await feeder.feed(feeder.fed + 1)
            record = await service._in_io(service.records.losses, MODEL, new)
            against = await service._in_io(service.records.losses, MODEL, old)
            assert len(set(record) & set(against)) == min_bars  # both runs' bars counted
            return feeder.fed

    fed = asyncio.run(run(until=5))
    assert registry.stage(MODEL, new) == "candidate"
    asyncio.run(run(until=None))
    asyncio.run(run(until=None))  # one more restart after the promotion: nothing again
    assert transitions(redis_client) == [
        ("model.retired", old, f"replaced by {new}"),
        ("model.promoted", new, "shadow"),
    ]


def test_predictions_are_kept_long_enough_for_a_shadow_period_on_the_longest_timeframe() -> None:
    from dataclasses import replace

    from quantum_daemon.domain.config import Config, ModelsConfig
    from quantum_daemon.domain.timeframes import DAY_MS
    from quantum_daemon.inference.service import prediction_retention_ms

    hourly = Config()
    assert prediction_retention_ms(hourly) == hourly.inference.retention_days * DAY_MS
    daily = replace(hourly, models=ModelsConfig(timeframes=("1h", "1d")))
    bars = daily.promotion.shadow_max_bars + daily.evaluation.horizon + 1
    assert prediction_retention_ms(daily) == bars * DAY_MS > 90 * DAY_MS
