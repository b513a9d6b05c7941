"""``quantum-daemon train`` as an operator runs it: a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantum_daemon.commands.train import parse_time
from quantum_daemon.core.evaluation.performance import TRADING_KEYS
from quantum_daemon.core.evaluation.report import JSON_KEYS
from quantum_daemon.storage.bar_store import Bar, BarStore
from tests.cli_helpers import run_cli
from tests.conftest import make_bars

# The real Binance bars live in ../shared beside the repository.
MARKET = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


@pytest.mark.parametrize(("family", "file"), [("xgb", "BTC_USDT-1h"), ("lgbm", "ETH_USDT-1h")])
def test_train_on_a_feather_file_prints_json_and_writes_version_and_report(
    tmp_path: Path, config: Path, family: str, file: str
) -> None:
    report = tmp_path / "report"
    done = run_cli(
        tmp_path,
        "train",
        "--family",
        family,
        "--data",
        str(MARKET / f"{file}.feather"),
        "--report",
        str(report),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)  # stdout is exactly one JSON object
    assert tuple(metrics) == JSON_KEYS
    symbol = file.split("-")[0].replace("_", "")
    assert metrics["model_id"] == f"{family}_{symbol}_1h" and metrics["family"] == family
    assert metrics["n_test_bars"] == round(0.15 * 5980)
    assert 0.0 <= metrics["dsr"] <= 1.0 and 0.0 <= metrics["psr"] <= 1.0
    for name in ("buy_and_hold", "flat"):
        assert tuple(metrics["baselines"][name]) == TRADING_KEYS
    version = tmp_path / "data" / "models" / metrics["model_id"] / metrics["version"]
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["metrics"]["sharpe"] == metrics["sharpe"]
    assert json.loads((report / "metrics.json").read_text()) == metrics
    rows = (report / "returns.csv").read_text().splitlines()
    assert rows[0] == "ts,strategy,buy_and_hold" and len(rows) == metrics["n_test_bars"] + 1
    assert (report / "equity.png").stat().st_size > 1000


def _fill_store(data_dir: Path, n: int) -> np.ndarray:
    bars = make_bars(n, seed=21, symbol="SYNUSDT")
    rows = [
        Bar("SYNUSDT", "1h", int(t), o, h, lo, c, v)
        for t, o, h, lo, c, v in zip(
            bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, strict=True
        )
    ]
    with BarStore.in_dir(data_dir) as store:
        store.insert_bars(rows)
    return bars.ts


def test_train_from_the_bar_store_with_a_time_range(tmp_path: Path, config: Path) -> None:
    ts = _fill_store(tmp_path / "data", 3000)
    done = run_cli(
        tmp_path, "train", "--family", "lgbm", "--symbol", "SYNUSDT", "--tf", "1h", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_test_bars"] == 450
    start, end = int(ts[1000]), int(ts[2999])
    ranged = run_cli(
        tmp_path,
        "train",
        "--family",
        "lgbm",
        "--symbol",
        "SYNUSDT",
        "--tf",
        "1h",
        "--from",
        str(start),
        "--to",
        str(end),
        "--json",
    )
    assert ranged.returncode == 0, ranged.stderr
    assert json.loads(ranged.stdout)["n_test_bars"] == round(0.15 * 1999)


def test_table_output_from_a_csv_file(tmp_path: Path, config: Path) -> None:
    """A CSV with a Freqtrade-style name (symbol and timeframe from the name)."""
    csv = tmp_path / "SYN_USDT-1h.csv"
    make_bars(2500, seed=22).to_frame().to_csv(csv, index=False)
    done = run_cli(tmp_path, "train", "--family", "xgb", "--data", str(csv))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("xgb_SYNUSDT_1h v") and "(2500 bars)" in lines[0]
    assert lines[1].split() == ["metric", "strategy", "buy_and_hold", "flat"]
    assert {line.split()[0] for line in lines[2:]} >= {"sharpe", "dsr", "mase", "trades"}


def test_errors_have_distinct_exit_codes(tmp_path: Path, config: Path) -> None:
    missing = run_cli(tmp_path, "train", "--family", "xgb", "--data", str(tmp_path / "no.feather"))
    assert missing.returncode == 66 and "not found" in missing.stderr
    short = run_cli(
        tmp_path,
        "train",
        "--family",
        "xgb",
        "--data",
        str(MARKET / "BTC_USDT-1h.feather"),
        "--from",
        "2024-09-01",
    )
    assert short.returncode == 65 and "training decisions" in short.stderr
    config.write_text("[evaluation]\nhorizn = 3\n")
    bad = run_cli(
        tmp_path, "train", "--family", "xgb", "--data", str(MARKET / "BTC_USDT-1h.feather")
    )
    assert bad.returncode == 78 and "horizn" in bad.stderr


def test_parse_time_accepts_iso_and_epoch_ms() -> None:
    assert parse_time("1704067200000") == 1_704_067_200_000
    assert parse_time("2024-01-01") == 1_704_067_200_000
    assert parse_time("2024-01-01T01:00:00+01:00") == 1_704_067_200_000


def test_train_needs_a_family_or_a_model_to_retrain_now(tmp_path: Path, config: Path) -> None:
    neither = run_cli(tmp_path, "train")
    assert neither.returncode == 2 and "--family" in neither.stderr and "--now" in neither.stderr
    unreachable = tmp_path / "unreachable.toml"
    unreachable.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\nconnect_timeout_s = 0.5\n')
    no_daemon = subprocess.run(
        [
            sys.executable,
            "-m",
            "quantum_daemon",
            "--config",
            str(unreachable),
            "train",
            "--now",
            "xgb_BTCUSDT_1h",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert no_daemon.returncode == 1 and "no daemon is running" in no_daemon.stderr
