"""``replay`` publishes bar files onto the streams exactly (the daemon stores
the very values of the file), and ``bars stats`` reports what was stored."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import redis

from quantum_daemon.cli import main
from quantum_daemon.ingest.replay import Progress
from quantum_daemon.storage.bar_store import BarStore
from tests.ingest_helpers import KEYS, ingest_service, make_config

SAMPLE = Path(__file__).resolve().parents[1] / "quantum_daemon" / "data" / "BTC_USDT-1h.feather"


def write_config(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[redis]\nurl = "{redis_url}"\n[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def test_replay_publishes_a_freqtrade_file_with_exact_values(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    assert main(["--config", str(config), "replay", str(SAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert "published 2500 bars to quantum:bars:BTCUSDT:1h" in out
    assert "replay: 2,500/2,500 bars (100%" in err  # not a terminal: plain progress lines
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = r.xrange(KEYS.bars("BTCUSDT", "1h"))
    frame = pd.read_feather(SAMPLE)
    assert len(entries) == 2500
    first = entries[0][1]
    assert list(first) == ["ts", "open", "high", "low", "close", "volume"]
    assert int(first["ts"]) == frame["date"].iloc[0].value // 1_000_000
    assert [float(e[1]["close"]) for e in entries] == frame["close"].tolist()


def test_replayed_bars_are_stored_exactly(redis_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, redis_url)
    assert main(["--config", str(config), "replay", "--quiet", str(SAMPLE)]) == 0
    with BarStore.in_dir(tmp_path / "data") as store:
        asyncio.run(ingest(make_config(redis_url), store))
        stored = store.read_frame("BTCUSDT", "1h")
    original = pd.read_feather(SAMPLE)
    assert stored["ts"].tolist() == (original["date"].astype("int64") // 1_000_000).tolist()
    for column in ("open", "high", "low", "close", "volume"):
        assert stored[column].tolist() == original[column].tolist()


async def ingest(config, store) -> None:
    async with ingest_service(config, store) as service:
        await service.run_until_idle()


def test_replay_reads_csv_and_json_with_the_series_given(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [[1_704_067_200_000 + i * 300_000, 10.0, 11.5, 9.5, 10.25, 3.0] for i in range(4)]
    csv = tmp_path / "eth.csv"
    pd.DataFrame(rows, columns=["ts", "open", "high", "low", "close", "volume"]).to_csv(csv)
    js = tmp_path / "SOL_USDT-5m.json"
    js.write_text(json.dumps(rows))
    url = ["--redis-url", redis_url]
    assert main(["replay", "-q", *url, "--symbol", "ETH/USDT", "--tf", "5m", str(csv)]) == 0
    assert main(["replay", "-q", *url, str(js)]) == 0
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert [e[1]["high"] for e in r.xrange(KEYS.bars("ETHUSDT", "5m"))] == ["11.5"] * 4
    assert [e[1]["close"] for e in r.xrange(KEYS.bars("SOLUSDT", "5m"))] == ["10.25"] * 4
    assert "published 4 bars to quantum:bars:SOLUSDT:5m" in capsys.readouterr().out


def test_a_bad_file_publishes_nothing(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    anonymous = tmp_path / "bars.csv"
    anonymous.write_text("ts,open,high,low,close,volume\n0,1,1,1,1,1\n")
    assert main(["replay", "--redis-url", redis_url, str(SAMPLE), str(anonymous)]) == 2
    assert "pass --symbol and --tf" in capsys.readouterr().err
    assert redis.Redis.from_url(redis_url).keys("quantum:bars:*") == []


def test_progress_redraws_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = Progress(total=10, out=out)
    progress.update(4)
    progress.update(6)
    progress.close()
    text = out.getvalue()
    assert text.startswith("\r[") and "10/10 bars (100%" in text and text.endswith("\n")
    assert "\n" not in text[:-1]


def test_bars_stats_as_table_and_json(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, redis_url)
    assert main(["--config", str(config), "bars", "stats"]) == 0
    assert capsys.readouterr().out.startswith("no bars stored in")
    main(["--config", str(config), "replay", "-q", str(SAMPLE)])
    r = redis.Redis.from_url(redis_url)
    r.xtrim(
        KEYS.bars("BTCUSDT", "1h"), maxlen=2490, approximate=False
    )  # a publisher lost ten bars ...
    r.xadd(
        KEYS.bars("BTCUSDT", "1h"),
        {"ts": 1_716_595_200_000, "open": 1, "high": 1, "low": 1, "close": 1, "volume": 1},
    )
    with BarStore.in_dir(tmp_path / "data") as store:
        asyncio.run(ingest(make_config(redis_url), store))  # ... then bar 0 came
    capsys.readouterr()
    assert main(["--config", str(config), "bars", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {
            "symbol": "BTCUSDT",
            "tf": "1h",
            "count": 2491,
            "first_ts": 1_716_595_200_000,
            "last_ts": 1_725_591_600_000,
            "missing": 9,
        }
    ]
    assert main(["--config", str(config), "bars", "stats"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "symbol   tf  count  first             last              missing",
        "BTCUSDT  1h  2,491  2024-05-25 00:00  2024-09-06 03:00  9",
    ]


def test_the_replay_command_runs_as_a_process(redis_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quantum_daemon", "replay", "--redis-url", redis_url, str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert redis.Redis.from_url(redis_url).xlen(KEYS.bars("BTCUSDT", "1h")) == 2500
