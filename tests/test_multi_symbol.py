"""Global models (``{family}_multi_{TF}``, ``[models.multi]``): configured and
checked, trained over several symbols (trees and torch), saved and loaded
with their symbol coding, judged per symbol on the single-symbol windows,
scheduled without a storm, and served per symbol by a real inference worker."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.core.evaluation.splits import walk_forward_folds
from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, split_plan
from quantum_daemon.core.evaluation.walkforward_multi import train_sets
from quantum_daemon.core.promotion import Verdict, judge
from quantum_daemon.core.scheduling import Scheduler, SchedulerPolicy, Trigger
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import (
    EX_CONFIG,
    ConfigError,
    EvaluationConfig,
    PromotionConfig,
    load,
)
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.timeframes import timeframe_ms
from quantum_daemon.models.families import load_model
from quantum_daemon.models.multi import UnknownSymbol
from quantum_daemon.storage.events import parse_entry
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.offline import OfflineResult, OfflineSpec, train_offline
from tests.cli_helpers import run_cli
from tests.conftest import make_bars
from tests.inference_helpers import Feeder, inference, make_config

SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
HORIZON = 4
TINY_TORCH = {"max_steps": 10, "lookback": 32, "eval_every": 5, "batch_size": 64}
SMALL_TREES = {"num_boost_round": 60}
KEYS = Keys()


def three_series(n: int) -> tuple:
    # different volatilities: the per-symbol target scaling has something to do
    return tuple(
        make_bars(n, seed=10 + i, symbol=s, vol=0.005 * (i + 1)) for i, s in enumerate(SYMBOLS)
    )


def train_multi(
    family: str, series: tuple, data_dir: Path, params: dict | None = None, windows: int = 2
) -> OfflineResult:
    return train_offline(
        OfflineSpec(
            family=family,
            bars=series[0],
            series=series,
            data_dir=data_dir,
            evaluation=EvaluationConfig(horizon=HORIZON, n_test_windows=windows),
            params=params or {},
        )
    )


# -- config ---------------------------------------------------------------------------------

GOOD = """
[ingest]
symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
[models]
symbols = ["BTCUSDT"]
[models.multi]
lgbm_1h = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
nhits_1h = ["ETHUSDT", "SOLUSDT"]
[models.params."lgbm_multi_1h"]
num_leaves = 7
"""

BAD_MULTI = {
    "sizer as multi": ('rl_sizer_1h = ["BTCUSDT", "ETHUSDT"]', "models.multi.rl_sizer_1h"),
    "evo as multi": ('evo_model_1h = ["BTCUSDT", "ETHUSDT"]', "models.multi.evo_model_1h"),
    "sizer family alone": ('rl_sizer = ["BTCUSDT", "ETHUSDT"]', "models.multi.rl_sizer"),
    "unknown family": ('forest_1h = ["BTCUSDT", "ETHUSDT"]', "models.multi.forest_1h"),
    "bad timeframe": ('lgbm_7m = ["BTCUSDT", "ETHUSDT"]', "models.multi.lgbm_7m"),
    "no timeframe": ('forest = ["BTCUSDT", "ETHUSDT"]', "models.multi.forest"),
    "one symbol, family alone": ('lgbm = ["BTCUSDT"]', "models.multi.lgbm"),
    "one symbol": ('lgbm_1h = ["BTCUSDT"]', "models.multi.lgbm_1h"),
    "twice": ('lgbm_1h = ["BTCUSDT", "BTCUSDT"]', "models.multi.lgbm_1h"),
    "not a list": ('lgbm_1h = "BTCUSDT"', "models.multi.lgbm_1h"),
    "bad symbol": ('lgbm_1h = ["BTCUSDT", "eth/usdt"]', "models.multi.lgbm_1h"),
    "not ingested": ('lgbm_1h = ["BTCUSDT", "XRPUSDT"]', "models.multi.lgbm_1h"),
}


def test_a_global_model_replaces_its_familys_single_models_on_its_symbols(
    tmp_path: Path,
) -> None:
    path = tmp_path / "replace.toml"
    path.write_text(
        '[ingest]\nsymbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]\ntimeframes = ["1h", "4h"]\n'
        '[models]\nfamilies = ["lgbm", "xgb"]\nsymbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]\n'
        'timeframes = ["1h", "4h"]\n'
        '[models.multi]\nlgbm = ["BTCUSDT", "ETHUSDT"]\n'  # a family alone: every timeframe
    )
    ids = {k.model_id for k in load(path, env={}).models.keys()}
    assert {"lgbm_multi_1h", "lgbm_multi_4h"} <= ids
    assert {"lgbm_SOLUSDT_1h", "lgbm_SOLUSDT_4h", "xgb_BTCUSDT_1h", "xgb_ETHUSDT_4h"} <= ids
    assert not ids & {"lgbm_BTCUSDT_1h", "lgbm_ETHUSDT_1h", "lgbm_BTCUSDT_4h"}
    assert len(ids) == 2 + 2 + 6  # global lgbm x2, lgbm on SOL x2, xgb everywhere x6


def test_a_multi_model_is_configured_with_its_symbols_and_params(tmp_path: Path) -> None:
    path = tmp_path / "multi.toml"
    path.write_text(GOOD)
    models = load(path, env={}).models
    assert models.multi.symbols_of("lgbm_multi_1h") == ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    assert models.multi.symbols_of("nhits_multi_1h") == ("ETHUSDT", "SOLUSDT")
    assert models.multi.symbols_of("lgbm_BTCUSDT_1h") == ()
    ids = [k.model_id for k in models.keys()]
    assert "lgbm_multi_1h" in ids and "nhits_multi_1h" in ids and "xgb_BTCUSDT_1h" in ids
    assert "lgbm_BTCUSDT_1h" not in ids  # the global lgbm answers on BTCUSDT
    assert models.params.for_model("lgbm", "lgbm_multi_1h")["num_leaves"] == 7
    assert "num_leaves" not in models.params.for_model("lgbm", "lgbm_BTCUSDT_1h")
    assert load(None, env={}).models.multi.models == {}


@pytest.mark.parametrize("name", sorted(BAD_MULTI))
def test_a_bad_multi_model_is_refused_naming_its_key(name: str, tmp_path: Path) -> None:
    line, key = BAD_MULTI[name]
    path = tmp_path / "bad.toml"
    path.write_text(f'[ingest]\nsymbols = ["BTCUSDT", "ETHUSDT"]\n[models.multi]\n{line}\n')
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(path, env={})


def test_check_config_exits_78_on_a_multi_sizer(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[models.multi]\nrl_sizer_1h = ["BTCUSDT", "ETHUSDT"]\n')
    result = run_cli(tmp_path, "check-config")
    assert result.returncode == EX_CONFIG
    assert "models.multi.rl_sizer_1h" in result.stderr and "one symbol" in result.stderr


# -- scheduling -----------------------------------------------------------------------------


def test_a_multi_model_retrains_on_its_cadence_from_any_symbols_bars() -> None:
    key = ModelKey("lgbm", "multi", "1h")
    single = ModelKey("lgbm", "AAAUSDT", "1h")
    scheduler = Scheduler(
        [key, single],
        SchedulerPolicy(retrain_every_bars=5, min_bars=10),
        {key.model_id: SYMBOLS},
    )
    for symbol in SYMBOLS:
        scheduler.set_available(symbol, "1h", 9)
    scheduler.start(0.0, {})
    assert not scheduler.is_ready(scheduler.pending()[0], 0.0)  # every series needs min_bars
    for symbol in SYMBOLS:
        scheduler.bars_stored(symbol, "1h", 1, 1.0)
    ready = [r.model_id for r in scheduler.pending() if scheduler.is_ready(r, 1.0)]
    assert set(ready) == {key.model_id, single.model_id}
    assert scheduler.next_job(1.0, lambda k: True) is not None
    assert scheduler.next_job(1.0, lambda k: True) is not None
    for model_id in (key.model_id, single.model_id):
        scheduler.job_finished(model_id, 2.0, True, True)
    # four rounds of bars over the three symbols: 12 bars, but 4 of each series
    for _ in range(4):
        for symbol in SYMBOLS:
            scheduler.bars_stored(symbol, "1h", 1, 3.0)
    assert scheduler.pending() == []
    scheduler.bars_stored("CCCUSDT", "1h", 1, 4.0)  # the fifth bar of one series
    (request,) = scheduler.pending()
    assert request.model_id == key.model_id and request.reasons == {Trigger.BARS}
    for symbol in ("AAAUSDT", "BBBUSDT"):
        scheduler.bars_stored(symbol, "1h", 1, 5.0)
    assert sorted(r.model_id for r in scheduler.pending()) == sorted(
        [key.model_id, single.model_id]
    )  # still one request for the multi model, merged


# -- no look-ahead across symbols -----------------------------------------------------------


def test_a_windows_fit_reads_no_symbol_past_the_earliest_symbols_fit() -> None:
    settings = EvaluationSettings(horizon=HORIZON, n_test_windows=2)
    early = make_bars(600, seed=1, symbol="AAAUSDT")
    late = make_bars(600, seed=2, symbol="BBBUSDT", start_ms=int(early.ts[0]) + 50 * 3_600_000)
    series = {"AAAUSDT": early, "BBBUSDT": late}
    folds = {s: walk_forward_folds(split_plan(len(b), settings))[0] for s, b in series.items()}
    sets = train_sets(series, folds, settings, 0, {})
    cutoff = int(early.ts[folds["AAAUSDT"].fit_end - 1])  # the earlier series' own fit end
    assert len(sets["AAAUSDT"].bars) == folds["AAAUSDT"].fit_end
    assert int(sets["BBBUSDT"].bars.ts[-1]) <= cutoff < int(late.ts[folds["BBBUSDT"].fit_end - 1])
    h_ms = HORIZON * timeframe_ms("1h")
    for train_set in sets.values():
        last_target = train_set.bars.ts[train_set.val_idx[-1]] + h_ms
        assert last_target <= cutoff
        assert train_set.train_idx[-1] + HORIZON < train_set.val_idx[0]  # the embargo holds


# -- training, saving, loading, judging -----------------------------------------------------


@pytest.mark.parametrize(
    ("family", "params"),
    [("lgbm", SMALL_TREES), ("xgb", SMALL_TREES), ("patchtst", TINY_TORCH)],
)
def test_a_multi_model_trains_saves_loads_and_is_judged_per_symbol(
    family: str, params: dict, tmp_path: Path
) -> None:
    series = three_series(700)
    result = train_multi(family, series, tmp_path, params)
    assert result.model_id == f"{family}_multi_1h"
    per_symbol = result.metrics["per_symbol"]
    assert set(per_symbol) == set(SYMBOLS)
    weakest = result.metrics["weakest_symbol"]
    assert result.metrics["sharpe"] == per_symbol[weakest]["sharpe"]
    assert min(m["sharpe"] for m in per_symbol.values()) == per_symbol[weakest]["sharpe"]
    # each symbol is judged on the very test decisions a single-symbol model of it gets
    settings = EvaluationSettings(horizon=HORIZON, n_test_windows=2)
    single_tests = np.concatenate(
        [f.test_idx for f in walk_forward_folds(split_plan(700, settings))]
    )
    model, meta = load_model(result.artifact_dir)
    for bars in series:
        window = meta["per_symbol"][bars.symbol]["data_window"]["evaluation_test"]
        assert window["first_ts"] == int(bars.ts[single_tests[0]])
        assert window["last_ts"] == int(bars.ts[single_tests[-1]])
        assert per_symbol[bars.symbol]["n_test_bars"] == single_tests.size
    assert meta["symbol"] == "multi" and meta["symbols"] == list(SYMBOLS)
    assert meta["model"]["symbol_codes"] == {s: i for i, s in enumerate(SYMBOLS)}
    assert model.symbols == SYMBOLS
    # the loaded model answers each symbol with its own scaling: one forecast per symbol
    idx = np.array([650, 699])
    answers = [model.predict(bars, idx) for bars in series]
    for forecast in answers:
        assert np.all(np.isfinite(forecast.mu)) and np.all(
            (forecast.p_up > 0) & (forecast.p_up < 1)
        )
    assert not np.allclose(answers[0].mu, answers[2].mu)
    for bars, forecast in zip(series, answers, strict=True):  # intervals fitted per symbol
        assert forecast.q05 is not None and forecast.q95 is not None, bars.symbol
        assert np.all(forecast.q05 < forecast.q95)
        assert meta["model"]["intervals"][bars.symbol]["horizon"] == HORIZON
    with pytest.raises(UnknownSymbol, match="DDDUSDT"):
        model.predict(make_bars(700, seed=9, symbol="DDDUSDT"), idx)
    # what was saved is what was fitted
    again, _ = load_model(result.artifact_dir)
    reloaded = again.predict(series[1], idx)
    np.testing.assert_allclose(reloaded.mu, answers[1].mu, rtol=1e-12)
    np.testing.assert_allclose(reloaded.q95, answers[1].q95, rtol=1e-12)  # type: ignore[arg-type]


def test_the_target_is_scaled_per_symbol(tmp_path: Path) -> None:
    result = train_multi("lgbm", three_series(700), tmp_path, SMALL_TREES, windows=1)
    _, meta = load_model(result.artifact_dir)
    scale = meta["model"]["target_scale"]
    # the symbols' volatilities are 1x, 2x, 3x: so are their target scales, roughly
    assert scale["AAAUSDT"] < scale["BBBUSDT"] < scale["CCCUSDT"]
    assert 2.0 < scale["CCCUSDT"] / scale["AAAUSDT"] < 4.0
    sigma = meta["model"]["residual_sigma"]
    assert sigma["AAAUSDT"] < sigma["CCCUSDT"]


def test_a_multi_version_must_pass_the_gates_on_every_symbol() -> None:
    good = {
        "trades": 20,
        "profit_factor": 1.5,
        "total_return": 0.1,
        "sharpe": 2.0,
        "mase": 0.9,
        "baselines": {"buy_and_hold": {"sharpe": 0.5}},
        "ece": 0.05,
    }
    bad = {**good, "trades": 2}
    cfg = PromotionConfig(min_dsr=0.0)
    passed = judge({**good, "per_symbol": {"AAAUSDT": good, "BBBUSDT": good}}, None, None, cfg)
    assert passed.stage == "candidate"
    failed = judge({**good, "per_symbol": {"AAAUSDT": good, "BBBUSDT": bad}}, None, None, cfg)
    assert failed.stage == "rejected" and failed.failed_gate == "min_trades"
    assert "BBBUSDT" in failed.reason


def test_a_multi_job_meets_the_active_version_head_to_head_on_every_symbol(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime, timedelta

    from quantum_daemon.training.jobs import ActiveRef, TrainJobSpec, _score, run_job

    series = three_series(700)
    first = train_multi("lgbm", series, tmp_path, SMALL_TREES, windows=1)
    spec = TrainJobSpec(
        job_id="job-1",
        family="lgbm",
        bars=series[0],
        series=series,
        data_dir=str(tmp_path),
        version_time=datetime.now(UTC) + timedelta(seconds=5),
        evaluation=EvaluationConfig(horizon=HORIZON, n_test_windows=1),
        params={**SMALL_TREES, "num_leaves": 4},
        active=ActiveRef(first.version, str(first.artifact_dir)),
    )
    result = run_job(spec)
    assert (result.model_id, result.symbol, result.n_bars) == ("lgbm_multi_1h", "multi", 2100)
    h2h = result.head_to_head
    assert h2h is not None and h2h.active_version == first.version
    test_size = round(0.15 * 700)  # each symbol's test window, all unseen by both versions
    assert h2h.n_decisions == len(SYMBOLS) * test_size
    new, _ = load_model(Path(result.artifact_dir))
    active, _ = load_model(first.artifact_dir)
    idx = np.arange(700 - 1 - test_size, 700 - 1)
    per_symbol = [
        (
            _score(replace(spec, bars=b, series=()), new, idx)[0],
            _score(replace(spec, bars=b, series=()), active, idx)[0],
        )
        for b in series
    ]
    assert h2h.new_sharpe == pytest.approx(np.mean([p[0] for p in per_symbol]))
    assert h2h.active_sharpe == pytest.approx(np.mean([p[1] for p in per_symbol]))
    assert h2h.new_sharpe != h2h.active_sharpe  # other parameters, another model


# -- serving --------------------------------------------------------------------------------


def test_a_multi_model_serves_each_of_its_symbols_in_the_inference_worker(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    series = (*three_series(720), make_bars(720, seed=99, symbol="DDDUSDT"))
    history = tuple(b.slice(0, 700) for b in series[:3])
    registry = Registry(tmp_path)
    singles = [  # the ensemble holds single- and multi-symbol models side by side
        OfflineSpec(
            family=family,
            bars=bars,
            data_dir=tmp_path,
            evaluation=EvaluationConfig(horizon=HORIZON, n_test_windows=1),
            params=SMALL_TREES,
        )
        for family, bars in (("xgb", history[0]), ("lgbm", history[1]))
    ]
    trained = [
        train_multi("lgbm", history, tmp_path, SMALL_TREES, windows=1),
        train_multi("nhits", history, tmp_path, TINY_TORCH, windows=1),
        *(train_offline(spec) for spec in singles),
    ]
    for result in trained:
        registry.register(result.model_id, result.version)
        registry.apply_verdict(result.model_id, result.version, Verdict("candidate", (), True, ""))
    cfg = make_config(redis_url, tmp_path, horizon=HORIZON)

    async def scenario() -> None:
        async with inference(cfg, families=()) as (service, store):
            feeders = [Feeder(service, store, bars) for bars in series]
            for feeder in feeders:
                feeder.store_until(700)
            await service.run_until_idle()
            for stop in range(701, 706):
                for feeder in feeders:
                    await feeder.feed(stop)

    asyncio.run(scenario())
    context = make_config(redis_url, tmp_path).inference.context_bars
    expected_models = {
        "AAAUSDT": {"lgbm_multi_1h", "nhits_multi_1h", "xgb_AAAUSDT_1h"},
        # one model per family in a series' ensemble: the symbol's own lgbm wins
        "BBBUSDT": {"lgbm_BBBUSDT_1h", "nhits_multi_1h"},
        "CCCUSDT": {"lgbm_multi_1h", "nhits_multi_1h"},
    }
    for bars in series[:3]:
        signals = [parse_signal(f) for _, f in redis_client.xrange(KEYS.signals(bars.symbol, "1h"))]
        assert [s.ts for s in signals][-1] == int(bars.ts[704])
        last = signals[-1]
        assert {c.model for c in last.contributions} == expected_models[bars.symbol]
        window = bars.slice(705 - context - 1, 705)
        for c in last.contributions:
            model, _ = load_model(registry.version_path(c.model, c.version))
            expected = model.predict(window, np.array([len(window) - 1]))
            assert c.mu == pytest.approx(float(expected.mu[0]), rel=1e-6, abs=1e-9)
    # a symbol the models were not fitted on gets no answer from them
    other = [parse_signal(f) for _, f in redis_client.xrange(KEYS.signals("DDDUSDT", "1h"))]
    assert len(other) >= 5 and all(not s.contributions for s in other)


# -- the daemon path ------------------------------------------------------------------------

PACKAGED = Path(__file__).resolve().parents[1] / "quantum_daemon" / "data"
DAEMON_MULTI = """
[ingest]
symbols = ["BTCUSDT", "ETHUSDT"]
[models]
families = []
[models.multi]
lgbm_1h = ["BTCUSDT", "ETHUSDT"]
[models.params.lgbm]
num_boost_round = 60
[training]
workers = 1
history_bars = 800
[evaluation]
n_test_windows = 1
[promotion]
min_trades = 0
min_profit_factor = 0.0
beat_baselines = false
max_ece = 1.0
min_dsr = 0.0
"""


def test_the_daemon_trains_a_multi_model_and_publishes_its_signals_per_symbol(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    from quantum_daemon.storage.bar_files import read_bar_file
    from tests.daemon_proc import DaemonProcess, api_port, write_config
    from tests.ingest_helpers import publish

    series = []
    for name in ("BTC_USDT-1h.feather", "ETH_USDT-1h.feather"):
        file = read_bar_file(PACKAGED / name)
        series.append(Bars.from_frame(file.frame, file.symbol, file.tf).slice(0, 830))
    config = write_config(
        tmp_path / "config.toml", redis_url, tmp_path / "data", api_port(), DAEMON_MULTI
    )
    daemon = DaemonProcess(config).start()

    def promoted() -> bool:
        kinds = [parse_entry(f) for _, f in redis_client.xrange(KEYS.events)]
        return any(e.type == "model.promoted" and e.model_id == "lgbm_multi_1h" for e in kinds)

    def signals_of(symbol: str) -> list:
        return [parse_signal(f) for _, f in redis_client.xrange(KEYS.signals(symbol, "1h"))]

    def answered(symbol: str) -> bool:
        return any(c.model == "lgbm_multi_1h" for s in signals_of(symbol) for c in s.contributions)

    try:
        daemon.wait_for("daemon.ready", timeout=60)
        for bars in series:
            publish(redis_client, bars.slice(0, 820))
        wait_until(promoted, timeout_s=180)
        for bars in series:
            publish(redis_client, bars.slice(820, 830))
        wait_until(lambda: all(answered(b.symbol) for b in series), timeout_s=120)
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()
    started = [
        e
        for _, f in redis_client.xrange(KEYS.events)
        if (e := parse_entry(f)).type == "training.started"
    ]
    assert [e.model_id for e in started] == ["lgbm_multi_1h"]  # one job for both symbols' bars
    for bars in series:
        last = signals_of(bars.symbol)[-1]
        assert last.ts == int(bars.ts[829])
        (contribution,) = last.contributions
        assert contribution.model == "lgbm_multi_1h"


def wait_until(check: Callable[[], bool], timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s}s")


# -- the simulation -------------------------------------------------------------------------


def test_the_simulation_runs_a_multi_model_beside_the_single_symbol_ones(tmp_path: Path) -> None:
    from quantum_daemon.domain.config import ModelsConfig
    from quantum_daemon.domain.multi_models import MultiModels
    from quantum_daemon.domain.params.catalog import ParamTables
    from tests.test_simulate import HISTORY, config, run_sim, walk

    both = ("BTCUSDT", "ETHUSDT")
    base = config(tmp_path)
    cfg = replace(
        base,
        models=ModelsConfig(
            families=("lgbm",),
            symbols=both,
            retrain_every_bars=60,
            params=ParamTables(families={"xgb": SMALL_TREES, "lgbm": SMALL_TREES}),
            multi=MultiModels({"xgb_multi_1h": both}),
        ),
    )
    bars = [walk(HISTORY + 130, seed=5), walk(HISTORY + 130, seed=6, symbol="ETHUSDT")]
    sim = run_sim(cfg, bars, tmp_path / "sim")
    trained = [e.model_id for e in sim.timeline if e.kind == "trained"]
    # one job per retrain for the multi model, on the single models' cadence
    assert trained.count("xgb_multi_1h") == trained.count("lgbm_BTCUSDT_1h") >= 2
    for symbol in both:
        records = sim.bars[(symbol, "1h")]
        both_kinds = {f"lgbm_{symbol}_1h", "xgb_multi_1h"}
        # the series' ensemble holds its own lgbm and the global xgb side by side
        assert any({m for m, _ in r.forecasts} == both_kinds for r in records), symbol
        assert all({m for m, _ in r.forecasts} <= both_kinds for r in records)
    # the version's live losses are the mean over its symbols' views
    for (model_id, version, _), _view in sim.views.items():
        main = sim.versions[(model_id, version)]
        views = [sim.views[(model_id, version, s)] for s in both]
        for ts, loss in main.losses.items():
            known = [v.losses[ts] for v in views if ts in v.losses]
            assert loss == pytest.approx(float(np.mean(known)))
    assert sim.model_records.get("xgb_multi_1h")
    from quantum_daemon.simulate.report import _with_intervals, model_stats

    scored = _with_intervals(model_stats(sim), sim)
    assert scored["models"]["xgb_multi_1h"]["interval_n"] > 0  # scored on its symbols' views
    assert scored["intervals"]["xgb"]["coverage_90"] is not None


def test_a_stale_global_model_leaves_the_ensemble_of_its_symbols(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    import dataclasses

    from quantum_daemon.domain.config import IngestConfig, ModelsConfig
    from quantum_daemon.domain.multi_models import MultiModels

    pair = ("AAAUSDT", "BBBUSDT")
    series = three_series(740)[:2]
    result = train_multi("lgbm", tuple(b.slice(0, 700) for b in series), tmp_path, SMALL_TREES, 1)
    registry = Registry(tmp_path)
    registry.register(result.model_id, result.version)
    registry.apply_verdict(result.model_id, result.version, Verdict("candidate", (), True, ""))
    with registry.files.edit(result.model_id) as state:  # as if trained 600 bars ago
        state.versions[result.version].data_last_ts = int(series[0].ts[100])
    base = make_config(redis_url, tmp_path, horizon=HORIZON)
    cfg = dataclasses.replace(
        base,
        promotion=dataclasses.replace(base.promotion, max_age_bars=30),
        ingest=IngestConfig(symbols=pair),
        models=ModelsConfig(multi=MultiModels({result.model_id: pair})),
    )

    async def scenario() -> None:
        async with inference(cfg, families=()) as (service, store):
            feeder = Feeder(service, store, series[1])  # one of its symbols is enough
            feeder.store_until(700)
            await service.run_until_idle()
            await feeder.feed(730)
            assert service.totals.predictions > 0 and service.totals.stale == 1

    asyncio.run(scenario())
    assert registry.active_version(result.model_id) is None
    events = [parse_entry(f) for _, f in redis_client.xrange(KEYS.events)]
    [retired] = [e for e in events if e.type == "model.retired"]
    assert retired.model_id == result.model_id
    assert retired.data["reason"].startswith("stale: no successful training for")
