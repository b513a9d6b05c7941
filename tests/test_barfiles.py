"""Bar files: every supported layout reads into the same frame, and the
series is taken from Freqtrade file names."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantum_daemon.storage.bar_files import (
    COLUMNS,
    BarFileError,
    normalize_symbol,
    parse_freqtrade_name,
    read_bar_file,
)

# The real Binance bars live in ../shared beside the repository.
MARKET = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
HOUR = 3_600_000


def sample_rows(n: int = 3) -> list[list[float]]:
    return [[T0 + i * HOUR, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 10.0 * i] for i in range(n)]


def assert_sample_frame(frame: pd.DataFrame, n: int = 3) -> None:
    assert list(frame.columns) == list(COLUMNS)
    assert frame["ts"].dtype == np.int64
    assert frame["ts"].tolist() == [T0 + i * HOUR for i in range(n)]
    assert frame["close"].tolist() == [100.5 + i for i in range(n)]
    assert all(frame[c].dtype == np.float64 for c in COLUMNS[1:])


def test_freqtrade_feather_of_the_shared_market_data(tmp_path: Path) -> None:
    source = MARKET / "BTC_USDT-1h.feather"
    bar_file = read_bar_file(source)
    assert (bar_file.symbol, bar_file.tf) == ("BTCUSDT", "1h")
    assert len(bar_file) == 5980
    assert bar_file.frame["ts"].iloc[0] == T0
    assert bar_file.frame["open"].iloc[0] == pytest.approx(42283.58)
    assert bool(np.all(np.diff(bar_file.frame["ts"].to_numpy()) == HOUR))


def test_freqtrade_json_plain_and_gzipped(tmp_path: Path) -> None:
    plain = tmp_path / "ETH_USDT-1h.json"
    plain.write_text(json.dumps(list(reversed(sample_rows()))))
    zipped = tmp_path / "ETH_USDT-1h.json.gz"
    zipped.write_bytes(gzip.compress(json.dumps(sample_rows()).encode()))
    for path in (plain, zipped):
        bar_file = read_bar_file(path)
        assert (bar_file.symbol, bar_file.tf) == ("ETHUSDT", "1h")
        assert_sample_frame(bar_file.frame)


def test_parquet_with_a_date_column(tmp_path: Path) -> None:
    frame = pd.DataFrame(sample_rows(), columns=list(COLUMNS))
    frame.insert(0, "date", pd.to_datetime(frame.pop("ts"), unit="ms", utc=True))
    path = tmp_path / "SOL_USDT_USDT-5m-futures.parquet"
    frame.to_parquet(path)
    bar_file = read_bar_file(path, tf="1h")
    assert (bar_file.symbol, bar_file.tf) == ("SOLUSDT", "1h")
    assert_sample_frame(bar_file.frame)


def test_csv_with_epoch_ms_or_iso_dates(tmp_path: Path) -> None:
    by_ts = tmp_path / "a.csv"
    pd.DataFrame(sample_rows(), columns=list(COLUMNS)).to_csv(by_ts, index=False)
    by_date = tmp_path / "b.csv"
    lines = [
        ",".join([pd.Timestamp(r[0], unit="ms", tz="UTC").isoformat(), *map(str, r[1:])])
        for r in sample_rows()
    ]
    by_date.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(lines) + "\n")
    for path in (by_ts, by_date):
        bar_file = read_bar_file(path, symbol="btc/usdt", tf="1h")
        assert bar_file.symbol == "BTCUSDT"
        assert_sample_frame(bar_file.frame)


def test_symbol_and_timeframe_must_be_known(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    pd.DataFrame(sample_rows(), columns=list(COLUMNS)).to_csv(path, index=False)
    with pytest.raises(BarFileError, match="--symbol and --tf"):
        read_bar_file(path)
    with pytest.raises(BarFileError, match="unknown timeframe"):
        read_bar_file(path, symbol="BTCUSDT", tf="7m")


def test_unreadable_files_raise_bar_file_errors(tmp_path: Path) -> None:
    with pytest.raises(BarFileError, match="not found"):
        read_bar_file(tmp_path / "BTC_USDT-1h.feather")
    odd = tmp_path / "BTC_USDT-1h.txt"
    odd.write_text("x")
    with pytest.raises(BarFileError, match="unsupported"):
        read_bar_file(odd, symbol="BTCUSDT", tf="1h")
    bad_json = tmp_path / "BTC_USDT-1h.json"
    bad_json.write_text('{"not": "rows"}')
    with pytest.raises(BarFileError, match="JSON list"):
        read_bar_file(bad_json)
    no_close = tmp_path / "BTC_USDT-1h.csv"
    no_close.write_text("ts,open,high,low,volume\n1,1,1,1,1\n")
    with pytest.raises(BarFileError, match="close"):
        read_bar_file(no_close)
    corrupt = tmp_path / "BTC_USDT-1h.feather"
    shutil.copy(bad_json, corrupt)
    with pytest.raises(BarFileError, match="cannot read"):
        read_bar_file(corrupt)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BTC_USDT-1h.feather", ("BTCUSDT", "1h")),
        ("BTC_USDT_USDT-1h-futures.feather", ("BTCUSDT", "1h")),
        ("ETH_BTC-5m.json", ("ETHBTC", "5m")),
        ("1INCH_USDT-15m.parquet", ("1INCHUSDT", "15m")),
        ("btcusdt.csv", (None, None)),
    ],
)
def test_freqtrade_names(name: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_freqtrade_name(name) == expected


def test_normalize_symbol() -> None:
    assert normalize_symbol("BTC/USDT:USDT") == "BTCUSDT"
    assert normalize_symbol("eth_usdt") == "ETHUSDT"
    with pytest.raises(BarFileError):
        normalize_symbol("BTC USDT")
