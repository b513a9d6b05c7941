"""Tuning inside the job: every trial lands in the trial ledger and deflates
the Sharpe, the best parameters are recorded in the version, and the search
never reads a bar of the test windows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, split_plan
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import TuningConfig
from quantum_daemon.domain.params.catalog import params_class
from quantum_daemon.models.families import training_family
from quantum_daemon.storage.bar_files import read_bar_file
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.tuning import tune
from tests.cli_helpers import run_cli

DATA = Path(__file__).resolve().parents[1] / "quantum_daemon" / "data" / "BTC_USDT-1h.feather"
MODEL = "lgbm_BTCUSDT_1h"


def real_bars(n: int = 1500) -> Bars:
    file = read_bar_file(DATA)
    bars = Bars.from_frame(file.frame, file.symbol, file.tf)
    return bars.slice(len(bars) - n, None)


def train(tmp_path: Path, *extra: str) -> dict[str, object]:
    done = run_cli(tmp_path, "train", "--family", "lgbm", "--data", str(DATA), "--json", *extra)
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)["version"]
    folder = tmp_path / "data" / "models" / MODEL / version
    meta: dict[str, object] = json.loads((folder / "metadata.json").read_text())
    return meta


def test_tuning_trials_go_to_the_ledger_and_raise_n_trials(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[tuning]\ntimeout_s = 0.0\n'
    )
    untuned = train(tmp_path)
    registry = Registry(tmp_path / "data")
    registry.recover()  # the daemon's start: versions written by `train` are registered
    before = registry.ledger(MODEL)
    assert before == {"trained": 1, "total": 1} and "tuned_params" not in untuned

    tuned = train(tmp_path, "--tune", "--tune-trials", "3")
    registry.recover()
    after = registry.ledger(MODEL)
    # three parameter sets tried: the version (one of them) and two more
    assert after["total"] - before["total"] == 3
    assert after == {"trained": 2, "tuning": 2, "total": 4}
    assert registry.n_trials(MODEL, "model", floor=1) == 4
    assert tuned["trials"] == 3
    assert set(tuned["tuned_params"]) == set(params_class("lgbm").search_space)  # type: ignore[arg-type]
    assert tuned["evaluation"]["n_trials"] == 3  # type: ignore[index]  # its own DSR deflated
    tuning = tuned["tuning"]
    assert tuning["n_trials"] == 3 and tuning["n_complete"] + tuning["n_pruned"] == 3  # type: ignore[index]
    for key, value in tuned["tuned_params"].items():  # type: ignore[attr-defined]
        assert tuned["params"][key] == value  # type: ignore[index]  # the version uses them
    # the search's windows end before the evaluation's test decisions
    windows = tuned["data_window"]
    assert tuning["window"]["val"]["last_ts"] < windows["evaluation_test"]["first_ts"]  # type: ignore[index]

    shown = json.loads(run_cli(tmp_path, "models", "show", MODEL).stdout)
    assert shown["trials"]["tuning"] == 2
    newest = shown["versions"][-1]
    assert newest["tuning"]["tuned_params"] == tuned["tuned_params"]
    assert newest["tuning"]["trials"] == 3


def _with_new_test_bars(bars: Bars, start: int, seed: int) -> Bars:
    """The same bars before decision ``start``; from there on another random walk."""
    rng = np.random.default_rng(seed)
    close = bars.close.copy()
    steps = rng.normal(0.0, 0.01, len(close) - start)
    close[start:] = close[start - 1] * np.exp(np.cumsum(steps))
    open_ = np.concatenate([bars.open[:start], np.r_[close[start - 1], close[start:-1]]])
    high = np.maximum(np.concatenate([bars.high[:start], close[start:] * 1.002]), open_)
    low = np.minimum(np.concatenate([bars.low[:start], close[start:] * 0.998]), open_)
    high, low = np.maximum(high, close), np.minimum(low, close)
    return Bars(bars.symbol, bars.tf, bars.ts, open_, high, low, close, bars.volume)


@pytest.mark.parametrize("pruning", [True, False])
def test_tuning_never_reads_the_test_windows(pruning: bool) -> None:
    settings = EvaluationSettings()
    bars = real_bars()
    test_start = split_plan(len(bars), settings).test_start
    changed = _with_new_test_bars(bars, test_start, seed=7)
    assert not np.allclose(changed.close[test_start:], bars.close[test_start:])
    plan = TuningConfig(max_trials=8, timeout_s=0.0, startup_trials=3, pruning=pruning)

    def search(series: Bars) -> tuple[dict[str, object], float, int]:
        found = tune("lgbm", training_family("lgbm"), series, settings, 0, {}, plan)
        return found.best, found.best_value, found.n_pruned

    original, changed_result = search(bars), search(changed)
    assert original == changed_result  # same trials, same losses: the test bars were not read
    best, _, n_pruned = original
    assert best != {k: v for k, v in params_class("lgbm")().as_dict().items() if k in best}
    if not pruning:
        assert n_pruned == 0


def test_pruning_stops_trials_that_trail_the_median() -> None:
    plan = TuningConfig(max_trials=12, timeout_s=0.0, startup_trials=2, pruning=True)
    found = tune("lgbm", training_family("lgbm"), real_bars(), EvaluationSettings(), 0, {}, plan)
    assert found.n_trials == 12 and found.n_complete + found.n_pruned + found.n_failed == 12
    assert found.n_pruned >= 1  # the trees report their validation curve


def test_the_configured_parameters_are_the_first_trial() -> None:
    plan = TuningConfig(max_trials=1, timeout_s=0.0, pruning=False)
    given = {"num_leaves": 12, "learning_rate": 0.02}
    found = tune("lgbm", training_family("lgbm"), real_bars(), EvaluationSettings(), 0, given, plan)
    assert found.best["num_leaves"] == 12 and found.best["learning_rate"] == 0.02
    assert found.params["num_leaves"] == 12
