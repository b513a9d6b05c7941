"""rl_sizer: the sizing environment is the evaluator's simulator, and a small
seeded PPO policy is deterministic, survives save/load, and can beat the plain
rule where sizing matters."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from safetensors.torch import load_file
from scipy.special import ndtr

from quantum_daemon.core.evaluation.backtest import cost_rate, next_bar_returns, run_backtest
from quantum_daemon.core.evaluation.performance import sharpe_ratio
from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, walk_forward
from quantum_daemon.core.scoring import compare_with_plain_rule
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import EvaluationConfig
from quantum_daemon.domain.signals import RecordedSignals
from quantum_daemon.models.base import Forecast, TrainSet
from quantum_daemon.models.families import load_model, training_family
from quantum_daemon.models.rl_sizer import (
    RecordedOrMomentum,
    RlSizerFamily,
    SizerParams,
    momentum_signal,
)
from quantum_daemon.models.sizing_env import Book, EnvSettings, SizingData, SizingEnv, observe
from quantum_daemon.training.jobs import (
    ActiveRef,
    TrainJobSpec,
    _score,
    common_unseen_decisions,
    run_job,
)
from tests.conftest import make_bars

RATE = cost_rate(10.0, 2.0)
TINY = {"total_timesteps": 512, "eval_every": 256, "n_steps": 128, "batch_size": 64, "n_epochs": 2}


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def sizing_data(n: int, seed: int = 0) -> SizingData:
    rng = np.random.default_rng(seed)
    return SizingData(
        mu=rng.normal(0, 0.01, n),
        p_up=rng.uniform(0, 1, n),
        volatility=np.abs(rng.normal(0.01, 0.002, n)),
        asset_returns=rng.normal(0, 0.01, n),
    )


def settings(**overrides: float) -> EnvSettings:
    return EnvSettings(**({"cost_rate": RATE, "horizon": 4, "vol_ref": 0.01} | overrides))  # type: ignore[arg-type]


def test_env_follows_the_gymnasium_api() -> None:
    check_env(SizingEnv(sizing_data(300), settings(episode_length=64)), skip_render_check=True)


def test_reward_is_the_backtests_costed_return_for_the_same_positions() -> None:
    data = sizing_data(200, seed=1)
    env = SizingEnv(data, settings(episode_length=200))
    positions = np.random.default_rng(2).uniform(-1, 1, 200)
    env.reset(seed=0, options={"start": 0})
    rewards, nets, truncated = [], [], False
    for p in positions:
        _, reward, terminated, truncated, info = env.step(np.array([p], dtype=np.float32))
        assert not terminated
        rewards.append(reward)
        nets.append(info["net_return"])
    assert truncated
    expected = run_backtest(
        positions.astype(np.float32).astype(np.float64), data.asset_returns, RATE
    )
    np.testing.assert_allclose(rewards, expected.net, rtol=0, atol=1e-15)
    np.testing.assert_allclose(nets, expected.net, rtol=0, atol=1e-15)


def test_scaled_and_penalized_reward_keeps_the_net_return_in_info() -> None:
    data = sizing_data(10, seed=3)
    env = SizingEnv(data, settings(reward_scale=100.0, risk_penalty=2.0, episode_length=10))
    env.reset(options={"start": 0})
    _, reward, _, _, info = env.step(np.array([1.0], dtype=np.float32))
    net = data.asset_returns[0] - RATE
    assert info["net_return"] == pytest.approx(net, abs=1e-15)
    assert reward == pytest.approx(100.0 * (net - 2.0 * net**2))


def test_observation_reports_drawdown_and_position() -> None:
    book, _ = Book().hold(1.0, 0.10, 0.0)
    book, _ = book.hold(1.0, -0.05, 0.0)
    assert book.drawdown == pytest.approx(-0.05)
    obs = observe(0.02, 0.75, 0.01, book, settings())
    assert obs.dtype == np.float32
    np.testing.assert_allclose(obs, [1.0, 0.5, 0.0, -0.05, 1.0], rtol=1e-6)
    assert observe(float("nan"), float("nan"), float("nan"), Book(), settings())[:3].tolist() == [
        0,
        0,
        0,
    ]


def test_episodes_start_where_the_seed_says() -> None:
    env = SizingEnv(sizing_data(500), settings(episode_length=50))
    first, _ = env.reset(seed=11)
    again, _ = env.reset(seed=11)
    np.testing.assert_array_equal(first, again)


def train_set(bars: Bars, seed: int = 0, **params: object) -> TrainSet:
    n = len(bars)
    return TrainSet(
        bars=bars,
        horizon=4,
        train_idx=np.arange(100, int(0.7 * n)),
        val_idx=np.arange(int(0.7 * n) + 8, n - 5),
        seed=seed,
        params=TINY | params,
    )


def state_of(model: RlSizerFamily, tmp: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model.save(tmp)[0]))


def test_a_tiny_ppo_run_is_deterministic_with_a_seed(tmp_path: Path) -> None:
    bars = make_bars(600, seed=4)
    runs = []
    for i, seed in enumerate((5, 5, 6)):
        model = RlSizerFamily()
        model.fit(train_set(bars, seed=seed))
        folder = tmp_path / str(i)
        folder.mkdir()
        runs.append((state_of(model, folder), model.predict(bars, np.arange(450, 595)).position))
    (a, pos_a), (b, pos_b), (c, _) = runs
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(pos_a, pos_b)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_save_and_load_give_identical_actions(tmp_path: Path) -> None:
    bars = make_bars(600, seed=7)
    model = RlSizerFamily()
    info = model.fit(train_set(bars))
    files = model.save(tmp_path)
    assert sorted(p.name for p in files) == ["policy.safetensors", "rl_sizer.json"]
    assert not list(tmp_path.glob("*.zip"))  # never sb3's pickled archive
    loaded = RlSizerFamily.load(tmp_path, {})
    idx = np.arange(450, 599)
    a, b = model.predict(bars, idx), loaded.predict(bars, idx)
    np.testing.assert_array_equal(a.position, b.position)
    assert loaded.metadata() == model.metadata()
    assert (
        json.loads((tmp_path / "rl_sizer.json").read_text())["fit"]["val_sharpe"] == -info.val_loss
    )
    book = Book(position=0.5, equity=0.97, peak=1.0)
    assert model.decide(book, 0.01, 0.6, 0.01) == loaded.decide(book, 0.01, 0.6, 0.01)


def test_predict_sizes_the_given_signal() -> None:
    bars = make_bars(600, seed=8)
    model = RlSizerFamily()
    model.fit(train_set(bars))
    idx = np.arange(450, 600)  # up to the live edge: the last decision has no next bar yet
    signal = Forecast(mu=np.full(idx.size, 0.01), p_up=np.full(idx.size, 0.7))
    forecast = model.predict(bars, idx, signal=signal)
    assert forecast.position is not None and forecast.position.shape == idx.shape
    assert np.all(np.abs(forecast.position) <= 1.0)
    np.testing.assert_array_equal(forecast.mu, signal.mu)
    np.testing.assert_array_equal(forecast.p_up, signal.p_up)


def test_learns_to_size_a_signal_the_plain_rule_ignores() -> None:
    """The signal knows the next bar (with noise) but is too timid for the plain
    rule (p_up within 0.5 +- 0.04, the rule wants 0.05): the rule stays flat,
    the sizer learns to follow the signal, out of sample."""
    bars = make_bars(1500, seed=1)
    following = np.zeros(len(bars))
    following[:-1] = np.log(bars.close[1:] / bars.close[:-1])
    hint = following + np.random.default_rng(9).normal(0, 0.005, len(bars))

    def timid(_: Bars, idx: np.ndarray, horizon: int) -> Forecast:
        return Forecast(mu=hint[idx], p_up=0.5 + 0.04 * np.tanh(hint[idx] / 0.01))

    model = RlSizerFamily(timid)
    data = TrainSet(
        bars, 4, np.arange(100, 1000), np.arange(1012, 1200), seed=0,
        params={"total_timesteps": 2048, "eval_every": 1024, "n_steps": 256},
    )  # fmt: skip
    info = model.fit(data)
    assert info.extra["beats_plain_rule_on_validation"]
    test_idx = np.arange(1212, 1499)
    forecast = model.predict(bars, test_idx)
    result = compare_with_plain_rule(
        forecast.position, forecast.mu, forecast.p_up, next_bar_returns(bars.close, test_idx), RATE
    )
    assert result.plain_sharpe == 0.0
    assert result.beats and result.sharpe > 0.3  # per bar, after costs


def test_goes_through_the_walk_forward_evaluator() -> None:
    bars = make_bars(900, seed=10)
    report = walk_forward(
        RlSizerFamily, bars, EvaluationSettings(horizon=4, n_test_windows=2), params=TINY
    ).report
    expected = momentum_signal(bars, report.test_idx, 4)
    np.testing.assert_allclose(report.mu, expected.mu)  # the cold-start signal, sized
    assert np.all(np.abs(report.strategy.positions) <= 1.0)
    assert not set(np.unique(report.strategy.positions)) <= {-1.0, 0.0, 1.0}  # sizes, not signs


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown SizerParams keys"):
        SizerParams.from_mapping({"clip_range": 0.1})
    with pytest.raises(ValueError, match="divide"):
        SizerParams(n_steps=100, batch_size=64)
    assert SizerParams.from_mapping({"net_arch": [8]}).net_arch == (8,)


# -- the recorded ensemble signal ---------------------------------------------


def planted_signals(bars: Bars, live_from: int, seed: int = 9) -> RecordedSignals:
    """An ensemble that went live at bar ``live_from`` and knows the next
    bar's return (with noise): the recorded signal is informative."""
    following = np.zeros(len(bars))
    following[:-1] = np.log(bars.close[1:] / bars.close[:-1])
    mu = following + np.random.default_rng(seed).normal(0, 0.005, len(bars))
    p_up = ndtr(mu / 0.01)
    rows = [(int(bars.ts[i]), float(mu[i]), float(p_up[i])) for i in range(live_from, len(bars))]
    return RecordedSignals.from_rows(rows)


def test_the_source_is_the_recorded_signal_where_recorded_and_momentum_elsewhere() -> None:
    bars = make_bars(300, seed=11)
    recorded = planted_signals(bars, live_from=200)
    idx = np.arange(150, 300)
    got = RecordedOrMomentum(recorded)(bars, idx, 4)
    momentum = momentum_signal(bars, idx, 4)
    before, after = idx < 200, idx >= 200
    np.testing.assert_array_equal(got.mu[before], momentum.mu[before])
    np.testing.assert_array_equal(got.p_up[before], momentum.p_up[before])
    np.testing.assert_array_equal(got.mu[after], recorded.mu)
    np.testing.assert_array_equal(got.p_up[after], recorded.p_up)
    assert RecordedOrMomentum(recorded).recorded_fraction(bars, idx) == pytest.approx(100 / 150)


def test_the_signal_at_a_bar_never_depends_on_later_recorded_entries() -> None:
    bars = make_bars(300, seed=12)
    recorded = planted_signals(bars, live_from=100)
    cut = int(bars.ts[219])
    early = RecordedSignals(
        recorded.ts[recorded.ts <= cut], recorded.mu[recorded.ts <= cut],
        recorded.p_up[recorded.ts <= cut],
    )  # fmt: skip
    shifted = RecordedSignals(recorded.ts, recorded.mu + (recorded.ts > cut), recorded.p_up)
    idx = np.arange(50, 220)
    full = RecordedOrMomentum(recorded)(bars, idx, 4)
    for other in (early, shifted):
        got = RecordedOrMomentum(other)(bars.slice(0, 220), idx, 4)
        np.testing.assert_array_equal(got.mu, full.mu)
        np.testing.assert_array_equal(got.p_up, full.p_up)


def test_learns_to_use_an_informative_recorded_signal() -> None:
    """The same bars, seed and steps: on the recorded signal (live from bar
    300) the sizer earns a clearly better Sharpe out of sample than on the
    momentum stand-in, and the fit record says which source it sized."""
    bars = make_bars(1500, seed=1)
    recorded = planted_signals(bars, live_from=300)
    data = TrainSet(
        bars, 4, np.arange(100, 1000), np.arange(1012, 1200), seed=0,
        params={"total_timesteps": 2048, "eval_every": 1024, "n_steps": 256},
    )  # fmt: skip
    test_idx = np.arange(1212, 1499)
    outcomes = {}
    for source, signals in (("momentum", None), ("recorded", recorded)):
        model = training_family("rl_sizer", signals)()
        info = model.fit(data)
        positions = model.predict(bars, test_idx).position
        net = run_backtest(positions, next_bar_returns(bars.close, test_idx), RATE).net
        outcomes[source] = (info.extra, sharpe_ratio(net, 1.0))
    (momentum, momentum_test), (recorded_fit, recorded_test) = outcomes.values()
    assert momentum["signal_source"] == "momentum"
    assert recorded_fit["signal_source"] == "recorded_ensemble+momentum"
    assert recorded_fit["recorded_fraction_train"] == pytest.approx(700 / 900)
    assert recorded_fit["recorded_fraction_val"] == 1.0
    assert recorded_fit["val_sharpe"] > momentum["val_sharpe"] + 0.3  # per bar, after costs
    assert recorded_test > 0.5 and recorded_test > momentum_test + 0.4


def test_walk_forward_sizes_the_recorded_signal_where_there_is_one() -> None:
    bars = make_bars(900, seed=10)
    recorded = planted_signals(bars, live_from=800)
    settings = EvaluationSettings(horizon=4, n_test_windows=2)
    report = walk_forward(training_family("rl_sizer", recorded), bars, settings, params=TINY).report
    live = report.test_idx >= 800
    assert 0 < live.sum() < live.size
    np.testing.assert_allclose(report.mu[live], recorded.mu[report.test_idx[live] - 800])
    np.testing.assert_allclose(
        report.mu[~live], momentum_signal(bars, report.test_idx, 4).mu[~live]
    )


def job_spec(
    bars: Bars, data_dir: Path, signals: RecordedSignals, **fields: object
) -> TrainJobSpec:
    spec = TrainJobSpec(
        job_id="job", family="rl_sizer", bars=bars, data_dir=str(data_dir),
        version_time=datetime(2024, 3, 1, tzinfo=UTC), params=TINY, seed=3,
        evaluation=EvaluationConfig(horizon=4, n_test_windows=2), signals=signals,
    )  # fmt: skip
    return dataclasses.replace(spec, **fields)  # type: ignore[arg-type]


def test_a_job_records_the_signal_source_and_sizes_it_in_the_head_to_head(
    tmp_path: Path,
) -> None:
    bars = make_bars(900, seed=13)
    recorded = planted_signals(bars, live_from=560)
    first = run_job(job_spec(bars.slice(0, 700), tmp_path, recorded))
    meta = json.loads((Path(first.artifact_dir) / "metadata.json").read_text())
    fit = meta["fit"]
    assert fit["signal_source"] == "recorded_ensemble+momentum"
    assert fit["recorded_fraction_train"] == 0.0  # the ensemble went live after training
    assert 0.0 < fit["recorded_fraction_val"] < 1.0
    assert fit["recorded_fraction_test"] == 1.0
    assert meta["model"]["fit"]["signal_source"] == "recorded_ensemble+momentum"

    active = ActiveRef(first.version, first.artifact_dir)
    spec = job_spec(bars, tmp_path, recorded, version_time=datetime(2024, 3, 2, tzinfo=UTC),
                    active=active)  # fmt: skip
    second = run_job(spec)
    h2h = second.head_to_head
    assert h2h is not None and h2h.n_decisions > 0
    scores = {}
    for name, signals in (("recorded", recorded), ("momentum", None)):
        new, new_meta = load_model(Path(second.artifact_dir), signals)
        old, old_meta = load_model(Path(first.artifact_dir), signals)
        idx = common_unseen_decisions(spec, new_meta, old_meta)
        scores[name] = (_score(spec, new, idx)[0], _score(spec, old, idx)[0])
    assert (h2h.new_sharpe, h2h.active_sharpe) == scores["recorded"]
    assert scores["recorded"] != scores["momentum"]  # the source matters on these bars
