"""The scheduler decides when each model trains: startup without an active
version, every N new bars, on an interval, on command; one job per model,
duplicates merged, models without an active version first."""

from __future__ import annotations

import asyncio

import pytest

from quantum_daemon.core.scheduling import (
    ModelStart,
    Scheduler,
    SchedulerPolicy,
    TrainRequest,
    Trigger,
)
from quantum_daemon.domain.ids import ModelKey, UnknownModel, model_keys
from quantum_daemon.lifecycle.scheduler import SchedulerLoop

KEYS = model_keys(["xgb", "nhits"], ["BTCUSDT", "ETHUSDT"], ["1h"])
ALL = {k.model_id for k in KEYS}


def make(policy: SchedulerPolicy | None = None, bars: int = 1000) -> Scheduler:
    scheduler = Scheduler(KEYS, policy or SchedulerPolicy(retrain_every_bars=10, min_bars=100))
    for symbol in ("BTCUSDT", "ETHUSDT"):
        scheduler.set_available(symbol, "1h", bars)
    return scheduler


def everyone(_: ModelKey) -> bool:
    return True


def drain(scheduler: Scheduler, now: float = 0.0) -> list[TrainRequest]:
    taken = []
    while (request := scheduler.next_job(now, everyone)) is not None:
        taken.append(request)
    return taken


def all_active(**overrides: ModelStart) -> dict[str, ModelStart]:
    return {mid: overrides.get(mid, ModelStart(has_active=True)) for mid in ALL}


def test_model_ids_round_trip_even_for_families_with_underscores() -> None:
    key = ModelKey("evo_model", "BTCUSDT", "1h")
    assert key.model_id == "evo_model_BTCUSDT_1h"
    assert ModelKey.parse("evo_model_BTCUSDT_1h") == key
    with pytest.raises(ValueError):
        ModelKey.parse("xgb")


def test_at_startup_every_model_without_an_active_version_trains() -> None:
    scheduler = make()
    scheduler.start(0.0, all_active(xgb_BTCUSDT_1h=ModelStart(has_active=False)))
    [request] = drain(scheduler)
    assert request.model_id == "xgb_BTCUSDT_1h"
    assert request.reasons == {Trigger.STARTUP}


def test_a_request_waits_until_the_series_holds_min_bars() -> None:
    scheduler = make(bars=0)
    scheduler.start(0.0, {})
    assert drain(scheduler) == []
    scheduler.bars_stored("BTCUSDT", "1h", 150, now=1.0)
    assert {r.model_id for r in drain(scheduler)} == {"xgb_BTCUSDT_1h", "nhits_BTCUSDT_1h"}


def test_every_retrain_every_bars_new_bars_a_model_trains_again() -> None:
    scheduler = make()
    scheduler.start(0.0, all_active())
    scheduler.bars_stored("ETHUSDT", "1h", 9, now=1.0)
    assert drain(scheduler) == []
    scheduler.bars_stored("ETHUSDT", "1h", 1, now=2.0)
    taken = drain(scheduler)
    assert {r.model_id for r in taken} == {"xgb_ETHUSDT_1h", "nhits_ETHUSDT_1h"}
    assert all(r.reasons == {Trigger.BARS} for r in taken)


def test_bars_stored_while_the_daemon_was_down_count_at_startup() -> None:
    scheduler = make()
    scheduler.start(0.0, all_active(xgb_BTCUSDT_1h=ModelStart(True, 0.0, bars_since_train=12)))
    assert [r.model_id for r in drain(scheduler)] == ["xgb_BTCUSDT_1h"]


def test_the_interval_trigger_fires_after_retrain_interval_s() -> None:
    scheduler = make(SchedulerPolicy(retrain_every_bars=10**6, retrain_interval_s=60.0))
    scheduler.start(0.0, all_active(xgb_BTCUSDT_1h=ModelStart(True, last_trained_at=100.0)))
    scheduler.tick(159.0)
    assert "xgb_BTCUSDT_1h" not in {r.model_id for r in drain(scheduler, 159.0)}
    scheduler.tick(160.0)
    taken = {r.model_id: r for r in drain(scheduler, 160.0)}
    assert taken["xgb_BTCUSDT_1h"].reasons == {Trigger.INTERVAL}


def test_a_zero_interval_never_triggers() -> None:
    scheduler = make()
    scheduler.start(0.0, all_active(xgb_BTCUSDT_1h=ModelStart(True, last_trained_at=0.0)))
    scheduler.tick(10**9)
    assert drain(scheduler) == []


def test_an_operator_request_for_an_unknown_model_is_refused() -> None:
    scheduler = make()
    with pytest.raises(UnknownModel):
        scheduler.request("xgb_DOGEUSDT_1h", 0.0)


def test_one_job_per_model_at_a_time_and_duplicates_merge() -> None:
    scheduler = make()
    scheduler.start(0.0, all_active())
    scheduler.request("xgb_BTCUSDT_1h", 5.0)
    scheduler.bars_stored("BTCUSDT", "1h", 10, now=7.0)
    scheduler.request("xgb_BTCUSDT_1h", 8.0)
    merged = next(r for r in scheduler.pending() if r.model_id == "xgb_BTCUSDT_1h")
    assert merged.reasons == {Trigger.OPERATOR, Trigger.BARS}
    assert merged.requested_at == 5.0
    first = scheduler.next_job(9.0, lambda k: k.model_id == "xgb_BTCUSDT_1h")
    assert first is not None
    scheduler.request("xgb_BTCUSDT_1h", 10.0)  # while it runs: its next request
    assert scheduler.next_job(11.0, lambda k: k.model_id == "xgb_BTCUSDT_1h") is None
    scheduler.job_finished("xgb_BTCUSDT_1h", 12.0, ok=True, has_active=True)
    again = scheduler.next_job(13.0, lambda k: k.model_id == "xgb_BTCUSDT_1h")
    assert again is not None and again.reasons == {Trigger.OPERATOR}


def test_models_without_an_active_version_go_first_then_operator_requests() -> None:
    scheduler = make()
    scheduler.start(0.0, all_active(nhits_ETHUSDT_1h=ModelStart(has_active=False)))
    scheduler.request("xgb_ETHUSDT_1h", 1.0)
    scheduler.bars_stored("BTCUSDT", "1h", 10, now=0.5)
    order = [r.model_id for r in drain(scheduler, 2.0)]
    assert order == ["nhits_ETHUSDT_1h", "xgb_ETHUSDT_1h", "nhits_BTCUSDT_1h", "xgb_BTCUSDT_1h"]


def test_only_jobs_that_can_run_are_handed_out() -> None:
    scheduler = make()
    scheduler.start(0.0, {})
    request = scheduler.next_job(0.0, lambda k: k.family == "nhits")
    assert request is not None and request.key.family == "nhits"
    assert len(scheduler.pending()) == 3


def test_a_failed_model_without_an_active_version_is_retried_later() -> None:
    scheduler = make(SchedulerPolicy(min_bars=1, failure_retry_s=30.0))
    scheduler.start(0.0, all_active(xgb_BTCUSDT_1h=ModelStart(has_active=False)))
    assert [r.model_id for r in drain(scheduler)] == ["xgb_BTCUSDT_1h"]
    scheduler.job_finished("xgb_BTCUSDT_1h", 10.0, ok=False, has_active=False)
    assert drain(scheduler, 39.0) == []
    [retry] = drain(scheduler, 40.0)
    assert retry.reasons == {Trigger.RETRY}


def test_the_new_bar_count_restarts_when_a_job_starts() -> None:
    scheduler = make()
    scheduler.start(0.0, all_active())
    scheduler.bars_stored("BTCUSDT", "1h", 10, now=1.0)
    drain(scheduler)
    for mid in ("xgb_BTCUSDT_1h", "nhits_BTCUSDT_1h"):
        scheduler.job_finished(mid, 2.0, ok=True, has_active=True)
    scheduler.bars_stored("BTCUSDT", "1h", 9, now=3.0)
    assert drain(scheduler) == []


def test_the_loop_starts_jobs_feeds_completions_back_and_drains_on_stop() -> None:
    scheduler = make()
    scheduler.start(0.0, all_active(xgb_BTCUSDT_1h=ModelStart(has_active=False)))
    started: list[str] = []
    active: set[str] = set()

    async def launch(request: TrainRequest) -> bool:
        started.append(request.model_id)
        active.add(request.model_id)
        return True

    async def main() -> None:
        stop = asyncio.Event()
        loop = SchedulerLoop(scheduler, everyone, launch, lambda m: m in active, tick_s=0.05)
        task = asyncio.create_task(loop.run(stop))
        await asyncio.sleep(0.2)
        loop.bars_stored("ETHUSDT", "1h", 10)
        await asyncio.sleep(0.2)
        with pytest.raises(UnknownModel):
            loop.request("nope_X_1h")
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert started[0] == "xgb_BTCUSDT_1h"
    assert set(started[1:]) == {"xgb_ETHUSDT_1h", "nhits_ETHUSDT_1h"}
    assert scheduler.running() == []


def test_the_loop_cancels_jobs_that_outlive_the_drain_period() -> None:
    scheduler = make()
    scheduler.start(0.0, {})
    cancelled: list[str] = []

    async def launch(request: TrainRequest) -> bool:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(request.model_id)
            raise
        return True

    async def main() -> None:
        stop = asyncio.Event()
        loop = SchedulerLoop(scheduler, everyone, launch, lambda _: False, tick_s=0.05, drain_s=0.1)
        task = asyncio.create_task(loop.run(stop))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert sorted(cancelled) == sorted(ALL)
