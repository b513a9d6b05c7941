"""Decay (issue #13): a drift detector on each live version's losses asks
for one retraining per break, not a storm; an active version whose model
has not trained for ``max_age_bars`` leaves the ensemble; the kill switch
takes the published position flat while the ensemble forecasts worse than
the naive 0.5 and lets go when it is back."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import redis

from quantum_daemon.core.drift import DriftWatch
from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.core.kill_switch import NAIVE_BRIER, KillSwitch
from quantum_daemon.domain.config import Config, PromotionConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.storage.events import parse_entry
from quantum_daemon.storage.registry.registry import Registry
from tests.inference_helpers import Feeder, inference, make_config
from tests.planted_family import install_version, planted_market

KEYS = Keys()
MODEL = "xgb_TESTUSDT_1h"
HOUR = 3_600_000


def brier_stream(rng: np.random.Generator, hit_rate: float, n: int) -> np.ndarray:
    """Brier losses of a forecaster saying 0.6 that is right ``hit_rate`` of the time."""
    return np.where(rng.random(n) < hit_rate, 0.16, 0.36)


def test_a_planted_break_is_one_drift_not_a_storm() -> None:
    rng = np.random.default_rng(1)
    losses = np.r_[brier_stream(rng, 0.65, 1500), brier_stream(rng, 0.35, 1500)]
    watch = DriftWatch(delta=0.002, cooldown_bars=2000)
    found = [
        d
        for t, x in enumerate(losses)
        if (d := watch.observe(MODEL, "v1", t * HOUR, float(x), HOUR))
    ]
    assert len(found) == 1
    [drift] = found
    assert 1500 < drift.ts // HOUR < 2400 and drift.mean_after > drift.mean_before
    # with a short cooldown the same break may fire again, but never within it
    short = DriftWatch(delta=0.002, cooldown_bars=200)
    times = [d.ts // HOUR for t, x in enumerate(losses)
             if (d := short.observe(MODEL, "v1", t * HOUR, float(x), HOUR))]  # fmt: skip
    assert times and all(b - a >= 200 for a, b in itertools.pairwise(times))


def test_no_drift_on_a_steady_or_improving_loss() -> None:
    rng = np.random.default_rng(2)
    steady = DriftWatch(delta=0.002, cooldown_bars=0)
    assert not any(
        steady.observe(MODEL, "v1", t * HOUR, float(x), HOUR)
        for t, x in enumerate(brier_stream(rng, 0.55, 4000))
    )
    better = np.r_[brier_stream(rng, 0.35, 1500), brier_stream(rng, 0.65, 1500)]
    improving = DriftWatch(delta=0.002, cooldown_bars=0)
    assert not any(
        improving.observe(MODEL, "v1", t * HOUR, float(x), HOUR) for t, x in enumerate(better)
    )
    improving.keep_only(set())
    assert improving.watched() == 0


def test_the_kill_switch_needs_a_full_window_and_has_a_band() -> None:
    switch = KillSwitch(window=10, margin=0.02)
    series = ("BTCUSDT", "1h")
    assert [switch.observe(series, 0.5) for _ in range(9)] == [None] * 9  # not full yet
    fired = switch.observe(series, 0.5)
    assert fired is not None and fired.killed and series in switch.killed
    assert "worse than the naive" in switch.killed[series]
    # 0.26 is between the naive 0.25 and 0.25 + margin: still held
    changes = [switch.observe(series, 0.26) for _ in range(10)]
    assert changes == [None] * 10 and series in switch.killed
    released = [c for _ in range(10) if (c := switch.observe(series, 0.2))]
    assert len(released) == 1 and not released[0].killed and series not in switch.killed
    assert released[0].rolling_brier <= NAIVE_BRIER
    assert KillSwitch(window=0, margin=0.02).observe(series, 1.0) is None  # off


def decay_config(redis_url: str, data_dir: Path, **promotion: object) -> Config:
    cfg = make_config(redis_url, data_dir, horizon=2)
    rules = {"min_dsr": 0.0, "beat_baselines": False, "max_ece": 1.0, **promotion}
    return dataclasses.replace(cfg, promotion=PromotionConfig(**rules))  # type: ignore[arg-type]


def signals(client: redis.Redis) -> list:
    return [parse_signal(f) for _, f in client.xrange(KEYS.signals("TESTUSDT", "1h"))]


def test_the_kill_switch_fires_and_recovers_live(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """An active version that says the opposite of what happens for 30 bars,
    then the truth: the published position is held at 0 from when its
    rolling Brier is plainly worse than 0.25, and let go once it is back."""
    bars = planted_market(80, 2, seed=4)
    truth_from = int(bars.ts[30])
    install_version(tmp_path, "xgb", {"invert_from_ts": 0, "invert_until_ts": truth_from})
    cfg = decay_config(redis_url, tmp_path, kill_window=10, kill_margin=0.05)

    async def scenario() -> None:
        async with inference(cfg, ("xgb",)) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(2)
            await feeder.feed(30)
            assert "kill switch" in service.status()["killed"]["TESTUSDT:1h"]
            await feeder.feed(80)
            assert service.status()["killed"] == {}

    asyncio.run(scenario())
    published = signals(redis_client)
    killed = [s for s in published if s.status == "killed"]
    assert killed and all(s.position == 0.0 and "kill switch" in s.reason for s in killed)
    assert all(s.mu != 0.0 for s in killed)  # the ensemble's view is still there
    assert min(s.ts for s in killed) >= int(bars.ts[10])  # a full window of scored forecasts
    assert max(s.ts for s in killed) > truth_from  # held until the record is back...
    after = [s for s in published if s.ts > max(x.ts for x in killed)]
    assert after and all(s.status == "live" for s in after)  # ... then released
    assert any(s.position != 0.0 for s in after)
    events = [parse_entry(f) for _, f in redis_client.xrange(KEYS.events)]
    kinds = [e.type for e in events if e.type.startswith("ensemble.")]
    assert kinds == ["ensemble.kill_switch", "ensemble.kill_switch_released"]


def test_a_drift_on_a_live_version_asks_for_one_retraining(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bars = planted_market(120, 2, seed=5)
    install_version(tmp_path, "xgb", {"invert_from_ts": int(bars.ts[60])})
    cfg = decay_config(redis_url, tmp_path, kill_window=0, drift_cooldown_bars=500)
    asked: list[tuple[str, str]] = []

    class Lifecycle:
        """The lifecycle's side of the inference step: what it was asked."""

        async def report_refused(self, model_id: str, version: str, reason: str) -> None:
            raise AssertionError("nothing is refused here")

        async def refresh_models(self) -> None:
            return None

        def request_retrain(self, model_id: str, trigger: str) -> None:
            asked.append((model_id, trigger))

    async def scenario() -> None:
        async with inference(cfg, ("xgb",), lifecycle=Lifecycle()) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(2)
            await feeder.feed(120)
            assert service.totals.drifts == 1

    asyncio.run(scenario())
    assert asked == [(MODEL, "drift")]
    events = [parse_entry(f) for _, f in redis_client.xrange(KEYS.events)]
    [drift] = [e for e in events if e.type == "model.drift_detected"]
    assert drift.data["bar_ts"] >= int(bars.ts[60])
    assert drift.data["mean_loss_after"] > drift.data["mean_loss_before"]


def test_a_stale_active_version_leaves_the_ensemble(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bars = planted_market(60, 2, seed=6)
    version = install_version(tmp_path, "xgb", {})
    _set_data_end(tmp_path, version, int(bars.ts[0]))  # trained on data up to bar 0
    cfg = decay_config(redis_url, tmp_path, kill_window=0, max_age_bars=30)

    async def scenario() -> None:
        async with inference(cfg, ("xgb",)) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(2)
            await feeder.feed(60)
            assert service.totals.stale == 1

    asyncio.run(scenario())
    registry = Registry(tmp_path)
    assert registry.active_version(MODEL) is None and registry.stage(MODEL, version) == "retired"
    events = [parse_entry(f) for _, f in redis_client.xrange(KEYS.events)]
    [retired] = [e for e in events if e.type == "model.retired"]
    assert retired.data["reason"].startswith("stale: no successful training for")
    published = signals(redis_client)
    stale_from = int(bars.ts[40])  # 30 bars of age, checked every 10
    assert all(s.status == "live" for s in published if s.ts <= int(bars.ts[30]))
    assert all(s.status == "flat" for s in published if s.ts > stale_from)


def _set_data_end(data_dir: Path, version: str, last_ts: int) -> None:
    """Record in the registry the data window the version was trained on."""
    registry = Registry(data_dir)
    with registry.files.edit(MODEL) as state:
        state.versions[version].data_last_ts = last_ts
