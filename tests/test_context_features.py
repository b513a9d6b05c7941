"""Context features (issue #15): reference symbols aligned on close time,
coarse bars only once fully closed, the append-only no-look-ahead property,
the tree families fitted, stored, loaded and served with them, a simulation
with ``[features] context = true``, and the config's checks."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quantum_daemon.core.context_features import (
    ContextMissing,
    ContextSpec,
    FeatureContext,
    coarse_features,
    context_matrix,
    reference_features,
)
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import (
    Config,
    ConfigError,
    EvaluationConfig,
    FeaturesConfig,
    ModelsConfig,
    PromotionConfig,
    StorageConfig,
    TrainingConfig,
    load,
)
from quantum_daemon.domain.timeframes import HOUR_MS
from quantum_daemon.models.families import load_model
from quantum_daemon.simulate.engine import Simulation
from quantum_daemon.simulate.inputs import plan_series
from quantum_daemon.training.offline import OfflineSpec, train_offline
from quantum_daemon.training.pool import PoolSettings, ProcessPool
from tests.cli_helpers import run_cli
from tests.conftest import make_bars
from tests.judge_rules import OLD_RULES

SPEC = ContextSpec(("BTCUSDT",), ("4h", "1d"))
DAY0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def hand_bars(closes: list[float], ts_hours: list[int], symbol: str = "ETHUSDT") -> Bars:
    close = np.asarray(closes, dtype=np.float64)
    ts = DAY0 + np.asarray(ts_hours, dtype=np.int64) * HOUR_MS
    return Bars(symbol, "1h", ts, close, close * 1.01, close * 0.99, close, np.ones(len(close)))


def equal_nan(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(a, b)  # NaN == NaN here


# -- reference symbols ---------------------------------------------------------------------


def test_reference_bar_is_the_one_closing_with_the_target_bar_missing_is_nan() -> None:
    target = hand_bars([10, 11, 12, 13, 14, 15], [0, 1, 2, 3, 4, 5])
    # no reference bar at hour 3; one at hour 6, after the target's last close
    ref = hand_bars([100, 101, 103, 107, 108, 200], [0, 1, 2, 4, 5, 6], "BTCUSDT")
    cols = reference_features(target, ref, "r_")
    want = [np.nan, np.log(101 / 100), np.log(103 / 101), np.nan, np.nan, np.log(108 / 107)]
    np.testing.assert_allclose(cols["r_ret_1"], want, equal_nan=True)
    equal_nan(cols["r_missing"], np.array([0, 0, 0, 1, 0, 0], dtype=np.float64))
    ret4 = cols["r_ret_4"]
    assert np.isnan(ret4[:4]).all()  # hour 3 itself is missing
    np.testing.assert_allclose(ret4[4:], [np.log(107 / 100), np.log(108 / 101)])


def test_a_reference_bar_moved_after_the_close_changes_no_earlier_row() -> None:
    target = make_bars(300, seed=1, symbol="ETHUSDT")
    ref = make_bars(300, seed=2, symbol="BTCUSDT")
    moved = replace(ref, close=np.r_[ref.close[:200], ref.close[200:] * 1.5])
    a = reference_features(target, ref, "r_")
    b = reference_features(target, moved, "r_")
    for name in a:
        equal_nan(a[name][:200], b[name][:200])
    assert not np.allclose(a["r_ret_1"][200:], b["r_ret_1"][200:], equal_nan=True)


def test_reference_correlation_and_volatility_match_a_direct_computation() -> None:
    target, ref = make_bars(200, seed=5, symbol="ETHUSDT"), make_bars(200, seed=6, symbol="BTC")
    cols = reference_features(target, ref, "r_")
    own, other = np.diff(np.log(target.close)), np.diff(np.log(ref.close))
    t = 150  # row t: one-bar returns ending at t, the last 96 (24)
    window = slice(t - 96, t)
    assert cols["r_corr_96"][t] == pytest.approx(np.corrcoef(own[window], other[window])[0, 1])
    assert cols["r_rvol_24"][t] == pytest.approx(np.std(other[t - 24 : t], ddof=1))


def test_context_matrix_refuses_without_the_reference_bars() -> None:
    with pytest.raises(ContextMissing, match="BTCUSDT"):
        context_matrix(make_bars(100, symbol="ETHUSDT"), SPEC, {})


# -- coarse timeframes ---------------------------------------------------------------------


def brute_since_close(bars: Bars, coarse_hours: int) -> np.ndarray:
    """For each row: log(close / close of the last complete coarse bucket that
    ended at or before the row's close), computed from scratch."""
    hours = (bars.ts - DAY0) // HOUR_MS
    out = np.full(len(bars), np.nan)
    for t in range(len(bars)):
        close_hour = hours[t] + 1
        end = close_hour // coarse_hours * coarse_hours  # end of the last bucket ended by then
        members = (hours >= end - coarse_hours) & (hours < end)
        if members.sum() == coarse_hours:
            last = np.flatnonzero(members)[-1]
            out[t] = np.log(bars.close[t] / bars.close[last])
    return out


def test_coarse_bucket_is_used_only_after_its_last_fine_bar_closed() -> None:
    # starts at 01:00: the first 4h bucket [00:00, 04:00) is incomplete
    hours = list(range(1, 30))
    bars = hand_bars([100 + h + (h % 3) for h in hours], hours)
    cols = coarse_features(bars, "4h", "c_")
    since = cols["c_since_close"]
    row = {h: i for i, h in enumerate(hours)}
    assert np.isnan(since[: row[7]]).all()  # nothing complete has closed before 08:00
    assert since[row[7]] == 0.0  # the bucket [04:00, 08:00) closed with bar 07:00
    assert since[row[8]] == pytest.approx(np.log(bars.close[row[8]] / bars.close[row[7]]))
    assert since[row[10]] == pytest.approx(np.log(bars.close[row[10]] / bars.close[row[7]]))
    assert cols["c_ret_1"][row[11]] == pytest.approx(
        np.log(bars.close[row[11]] / bars.close[row[7]])
    )
    assert np.isnan(cols["c_ret_1"][row[10]])  # one complete bucket only by then
    np.testing.assert_allclose(
        since, brute_since_close(bars, 4), rtol=1e-9, atol=1e-15, equal_nan=True
    )


def test_a_bucket_with_a_missing_fine_bar_is_never_used() -> None:
    bars = make_bars(24 * 6, seed=3, start_ms=DAY0)
    keep = np.ones(len(bars), dtype=bool)
    keep[24 * 2 + 5] = False  # one hour missing on day 3
    gappy = Bars(bars.symbol, bars.tf, *(getattr(bars, k)[keep] for k in Bars.__dataclass_fields__
                                         if k not in ("symbol", "tf")))  # fmt: skip
    since = coarse_features(gappy, "1d", "d_")["d_since_close"]
    np.testing.assert_allclose(
        since, brute_since_close(gappy, 24), rtol=1e-9, atol=1e-15, equal_nan=True
    )
    day3_used = (gappy.ts >= DAY0 + 3 * 24 * HOUR_MS - HOUR_MS) & (
        gappy.ts < DAY0 + 4 * 24 * HOUR_MS - HOUR_MS
    )
    assert np.isnan(since[day3_used]).all()
    assert np.isfinite(since[~day3_used & (gappy.ts >= DAY0 + 23 * HOUR_MS)]).all()


def test_range_position_is_inside_the_coarse_range_or_beyond_it() -> None:
    bars = make_bars(24 * 10, seed=8, start_ms=DAY0)
    pos = coarse_features(bars, "4h", "c_")["c_range_pos_6"]
    t = 200
    close_hour = t + 1
    last_end = close_hour // 4 * 4
    lo = bars.low[last_end - 24 : last_end].min()
    hi = bars.high[last_end - 24 : last_end].max()
    assert pos[t] == pytest.approx((bars.close[t] - lo) / (hi - lo))


# -- which features a model gets -----------------------------------------------------------


def test_a_reference_symbols_own_model_has_no_reference_features_of_itself() -> None:
    assert SPEC.for_series("BTCUSDT", "1h") == ContextSpec((), ("4h", "1d"))
    assert SPEC.for_series("ETHUSDT", "4h") == ContextSpec(("BTCUSDT",), ("1d",))
    assert SPEC.for_series("BTCUSDT", "1d").empty
    names = SPEC.for_series("ETHUSDT", "1h").feature_names()
    assert len(names) == len(set(names)) == 7 + 2 * 5
    assert ContextSpec.from_dict(SPEC.to_dict()) == SPEC


# -- the append-only no-look-ahead property ------------------------------------------------


def with_future(bars: Bars, k: int, seed: int, vol: float) -> Bars:
    future = make_bars(k, seed=seed, vol=vol, symbol=bars.symbol)
    step = bars.ts[1] - bars.ts[0]
    scale = bars.close[-1] / future.open[0]
    ts = bars.ts[-1] + step * (1 + np.arange(k))
    cols = {
        c: np.concatenate([getattr(bars, c), getattr(future, c) * (scale if c != "volume" else 1)])
        for c in ("open", "high", "low", "close", "volume")
    }
    return Bars(bars.symbol, bars.tf, np.concatenate([bars.ts, ts]), **cols)


@pytest.mark.parametrize(("n", "k"), [(400, 1), (700, 37), (900, 300)])
def test_appending_future_bars_to_target_and_reference_never_changes_past_rows(
    n: int, k: int
) -> None:
    from quantum_daemon.models.trees import tree_features

    target = make_bars(n, seed=4, symbol="ETHUSDT", start_ms=DAY0 + 5 * HOUR_MS)
    ref = make_bars(n + 3, seed=5, symbol="BTCUSDT", start_ms=DAY0 + 2 * HOUR_MS)
    spec = SPEC.for_series("ETHUSDT", "1h")
    base = tree_features(target, FeatureContext(spec, {"BTCUSDT": ref}))
    assert np.isfinite(base[-50:]).all()  # the comparison is not all NaN
    for seed, vol in ((1, 0.01), (2, 0.2)):
        longer = tree_features(
            with_future(target, k, seed, vol),
            FeatureContext(spec, {"BTCUSDT": with_future(ref, k, seed + 10, vol)}),
        )
        equal_nan(longer[:n], base)


# -- the tree families with context --------------------------------------------------------


def lead_lag(n: int, seed: int) -> tuple[Bars, Bars]:
    """A reference random walk and a target whose next-bar return follows the
    reference's last one: an edge only the reference features can see."""
    rng = np.random.default_rng(seed)
    ref_ret = 0.01 * rng.standard_normal(n)
    own_ret = 0.8 * np.r_[0.0, ref_ret[:-1]] + 0.004 * rng.standard_normal(n)
    ts = DAY0 + np.arange(n, dtype=np.int64) * HOUR_MS

    def bars(symbol: str, ret: np.ndarray) -> Bars:
        close = 100 * np.exp(np.cumsum(ret))
        open_ = np.r_[100.0, close[:-1]]
        high, low = np.maximum(open_, close) * 1.001, np.minimum(open_, close) * 0.999
        return Bars(symbol, "1h", ts, open_, high, low, close, rng.lognormal(3, 0.5, n))

    return bars("ETHUSDT", own_ret), bars("BTCUSDT", ref_ret)


EVAL = EvaluationConfig(horizon=1, n_test_windows=1, fee_bps=0.0, slippage_bps=0.0)


@pytest.mark.parametrize("family", ["lgbm", "xgb"])
def test_a_tree_trained_with_context_saves_loads_and_predicts_with_it(
    family: str, tmp_path: Path
) -> None:
    target, ref = lead_lag(1500, seed=1)
    spec = ContextSpec(("BTCUSDT",), ("4h",))
    context = FeatureContext(spec, {"BTCUSDT": ref})
    params = {"num_boost_round": 60}
    trained = train_offline(
        OfflineSpec(family, target, tmp_path, EVAL, params=params, context=context)
    )
    plain = train_offline(OfflineSpec(family, target, tmp_path / "plain", EVAL, params=params))
    # the lead-lag edge is visible only through the reference features
    assert trained.metrics["sharpe"] > 5 and trained.metrics["sharpe"] > plain.metrics["sharpe"]
    model, meta = load_model(
        trained.artifact_dir, context=FeatureContext(ContextSpec(), {"BTCUSDT": ref})
    )
    assert meta["context"]["reference_symbols"] == ["BTCUSDT"]
    assert meta["features"][-1] == "tf4h_since_close" and "ref_BTCUSDT_ret_1" in meta["features"]
    idx = np.arange(1400, 1500)
    served = model.predict(target, idx)
    again, _ = load_model(trained.artifact_dir, context=context)
    np.testing.assert_array_equal(again.predict(target, idx).mu, served.mu)
    bare, _ = load_model(trained.artifact_dir)
    with pytest.raises(ContextMissing, match="BTCUSDT"):
        bare.predict(target, idx)
    # the reference series' future does not reach the served rows
    cut = FeatureContext(ContextSpec(), {"BTCUSDT": ref.slice(0, 1450)})
    bare.use_context(cut)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(bare.predict(target.slice(0, 1450), idx[:50]).mu, served.mu[:50])


# -- a simulation with [features] context = true -------------------------------------------


def sim_config(tmp: Path) -> Config:
    return Config(
        storage=StorageConfig(data_dir=tmp / "data"),
        training=TrainingConfig(history_bars=400, workers=2),
        models=ModelsConfig(families=("lgbm",), symbols=("ETHUSDT",), retrain_every_bars=60),
        evaluation=EvaluationConfig(horizon=4, n_test_windows=2),
        promotion=PromotionConfig(
            min_trades=0, min_profit_factor=0.0, shadow_min_bars=12, shadow_max_bars=48, **OLD_RULES
        ),
        features=FeaturesConfig(context=True, coarse_timeframes=("4h",)),
    )


def run_sim(cfg: Config, target: Bars, ref: Bars, out: Path) -> Simulation:
    series = plan_series([target], cfg.training.history_bars, None, None)

    async def go() -> Simulation:
        pool = ProcessPool(PoolSettings.from_config(cfg, gpu_present=False))
        async with pool:
            sim = Simulation(cfg, series, ["lgbm"], out / "registry", pool, reference=[ref])
            await sim.run()
        return sim

    return asyncio.run(go())


def forecasts_until(sim: Simulation, t_ms: int) -> list[object]:
    return [
        (r.ts, sorted((k, p.mu, p.p_up) for k, (_, p) in r.forecasts.items()))
        for rs in sim.bars.values()
        for r in rs
        if r.ts + HOUR_MS <= t_ms
    ]


def test_a_simulation_with_context_trains_and_serves_it_without_look_ahead(
    tmp_path: Path,
) -> None:

    cfg = sim_config(tmp_path)
    n, cut = 620, 520
    target, ref = lead_lag(n, seed=3)
    first = run_sim(cfg, target, ref, tmp_path / "a")
    assert first.jobs_done >= 2 and first.jobs_failed == 0
    meta = json.loads(next((tmp_path / "a" / "registry").rglob("metadata.json")).read_text())
    assert meta["context"]["reference_symbols"] == ["BTCUSDT"]
    a = forecasts_until(first, 10**15)
    assert sum(len(f) for _, f in a) > 50  # versions were live and forecast
    assert all(np.isfinite(mu) for _, f in a for _, mu, _ in f)
    # the reference's future replaced: nothing up to T moves, something after does
    other = with_future(ref.slice(0, cut), n - cut, seed=77, vol=0.05)
    second = run_sim(cfg, target, other, tmp_path / "b")
    t_ms = int(target.ts[cut - 1]) + HOUR_MS
    assert forecasts_until(first, t_ms) == forecasts_until(second, t_ms)
    assert a != forecasts_until(second, 10**15)


# -- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('context = "yes"', "features.context"),
        ('reference_symbols = ["btc usdt"]', "features.reference_symbols"),
        ('coarse_timeframes = ["7m"]', "features.coarse_timeframes"),
        ('models = ["nhits"]', "features.models"),
        ("depth = 2", "features.depth"),
        ('context = true\nreference_symbols = ["SOLUSDT"]', "features.reference_symbols"),
    ],
)
def test_bad_features_config_names_the_key(text: str, key: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[features]\n{text}\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(path, env={})


def test_features_default_off_and_the_cli_exits_78_on_a_bad_key(tmp_path: Path) -> None:
    cfg = load(None, env={})
    assert cfg.features.context is False
    assert not cfg.features.applies_to("lgbm", "lgbm_ETHUSDT_1h")
    on = FeaturesConfig(context=True, models=("xgb_ETHUSDT_1h",))
    assert on.applies_to("xgb", "xgb_ETHUSDT_1h") and not on.applies_to("xgb", "xgb_SOLUSDT_1h")
    assert not FeaturesConfig(context=True).applies_to("nhits", "nhits_ETHUSDT_1h")
    (tmp_path / "config.toml").write_text('[features]\ncoarse_timeframes = ["2h"]\n')
    done = run_cli(tmp_path, "check-config")
    assert done.returncode == 78 and "features.coarse_timeframes" in done.stderr


# -- the inference worker ------------------------------------------------------------------


def test_the_inference_worker_serves_a_context_version_with_the_stored_reference(
    redis_url: str, redis_client: Any, tmp_path: Path
) -> None:
    from quantum_daemon.core.ensemble import parse_signal
    from quantum_daemon.core.promotion import Verdict
    from quantum_daemon.domain.config import InferenceConfig
    from quantum_daemon.domain.keys import Keys
    from quantum_daemon.storage.registry.registry import Registry
    from tests.inference_helpers import Feeder, bar_at, inference, make_config

    target, ref = lead_lag(760, seed=11)
    context = FeatureContext(ContextSpec(("BTCUSDT",), ("4h",)), {"BTCUSDT": ref.slice(0, 700)})
    evaluation = EvaluationConfig(horizon=4, n_test_windows=1)
    trained = train_offline(
        OfflineSpec("lgbm", target.slice(0, 700), tmp_path, evaluation, context=context)
    )
    registry = Registry(tmp_path)
    registry.register(trained.model_id, trained.version)
    registry.apply_verdict(trained.model_id, trained.version, Verdict("candidate", (), True, ""))
    shutil.copytree(tmp_path, tmp_path / "bare")  # the same registry, another bar store
    key = Keys().signals("ETHUSDT", "1h")

    async def scenario(data_dir: Path, reference_until: int) -> Any:
        cfg = make_config(redis_url, data_dir, horizon=4)
        async with inference(cfg, families=()) as (service, store):
            store.insert_bars([bar_at(ref, t) for t in range(reference_until)])
            feeder = Feeder(service, store, target)
            feeder.store_until(700)
            await service.run_until_idle()
            await feeder.feed(705)
            return service.metrics.model_errors.labels("lgbm")._value.get()

    assert asyncio.run(scenario(tmp_path, 760)) == 0
    last = parse_signal(redis_client.xrevrange(key, count=1)[0][1])
    (contribution,) = last.contributions
    window = target.slice(705 - InferenceConfig().context_bars - 1, 705)
    reference = {"BTCUSDT": ref.slice(0, 760)}
    model, _ = load_model(trained.artifact_dir, context=FeatureContext(ContextSpec(), reference))
    expected = model.predict(window, np.array([len(window) - 1]))
    assert contribution.mu == pytest.approx(float(expected.mu[0]), rel=1e-9, abs=1e-12)
    # without any reference bar in the store the version answers nothing, and says so
    redis_client.delete(key)
    assert asyncio.run(scenario(tmp_path / "bare", 0)) > 0
    last = parse_signal(redis_client.xrevrange(key, count=1)[0][1])
    assert last.contributions == ()


# -- quantum-daemon train ------------------------------------------------------------------


def test_train_cli_reads_the_reference_file_and_refuses_without_it(tmp_path: Path) -> None:

    target, ref = lead_lag(1500, seed=2)
    eth, btc = tmp_path / "ETH_USDT-1h.feather", tmp_path / "BTC_USDT-1h.feather"
    target.to_frame().to_feather(eth)
    ref.to_frame().to_feather(btc)
    (tmp_path / "config.toml").write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        '[features]\ncontext = true\ncoarse_timeframes = ["4h"]\n'
    )
    args = ("train", "--family", "lgbm", "--data", str(eth), "--horizon", "1", "--json")
    done = run_cli(tmp_path, *args, "--reference", str(btc))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)
    version = tmp_path / "data" / "models" / metrics["model_id"] / metrics["version"]
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["context"]["features"] == list(ContextSpec(("BTCUSDT",), ("4h",)).feature_names())
    refused = run_cli(tmp_path, *args)  # no --reference, no bar store
    assert refused.returncode == 65 and "BTCUSDT" in refused.stderr


# -- the daemon's training job -------------------------------------------------------------


def test_the_daemons_job_reads_the_reference_from_the_store_and_trains_with_it(
    tmp_path: Path,
) -> None:
    import time

    from quantum_daemon.core.scheduling import TrainRequest
    from quantum_daemon.domain.ids import ModelKey
    from quantum_daemon.domain.keys import Keys
    from quantum_daemon.lifecycle.specs import JobSpecs
    from quantum_daemon.storage.bar_store import BarStore
    from quantum_daemon.storage.registry.registry import Registry
    from quantum_daemon.training.jobs import run_job
    from tests.inference_helpers import bar_at

    target, ref = lead_lag(900, seed=5)
    cfg = Config(
        storage=StorageConfig(data_dir=tmp_path),
        training=TrainingConfig(history_bars=800),
        evaluation=EvaluationConfig(horizon=1, n_test_windows=1),
        features=FeaturesConfig(context=True, coarse_timeframes=("4h", "1d")),
    )
    store = BarStore.in_dir(tmp_path)
    store.insert_bars([bar_at(target, t) for t in range(900)])
    store.insert_bars([bar_at(ref, t) for t in range(850)])  # the reference lags behind
    specs = JobSpecs(cfg, store, Registry(tmp_path), None, Keys(), time.time)  # type: ignore[arg-type]

    def build(family: str) -> Any:
        request = TrainRequest(ModelKey(family, "ETHUSDT", "1h"), frozenset(), 0.0, False)
        return asyncio.run(specs.build(request))

    spec = build("lgbm")
    assert spec.context is not None and spec.context.spec == ContextSpec(("BTCUSDT",), ("4h", "1d"))
    got = spec.context.reference["BTCUSDT"]
    np.testing.assert_array_equal(got.ts, ref.ts[100:850])  # the job's span, what is stored
    assert build("nhits").context is None  # only the tree families read context
    store.close()
    result = run_job(spec)
    meta = json.loads((Path(result.artifact_dir) / "metadata.json").read_text())
    assert meta["context"]["coarse_timeframes"] == ["4h", "1d"]
    assert meta["fit"]["n_train"] > 100
