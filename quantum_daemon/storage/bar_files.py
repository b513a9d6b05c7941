"""Bar files on disk: CSV, Freqtrade JSON and Freqtrade feather / parquet.

``read_bar_file`` turns any of them into one frame with the columns ``ts``
(bar open time, epoch ms UTC, int64), ``open``, ``high``, ``low``, ``close``,
``volume`` (float64), sorted by ``ts``, plus the symbol and timeframe, taken
from a Freqtrade file name (``BTC_USDT-1h.feather``, futures
``BTC_USDT_USDT-1h-futures.feather``) when not given. Values are not
validated here: the ingest edge does that for every bar it receives.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantum_daemon.domain.timeframes import TIMEFRAME_MS

COLUMNS = ("ts", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = COLUMNS[1:]
TIME_COLUMNS = ("ts", "date", "timestamp", "time")
SYMBOL_COLUMNS = ("symbol", "pair")  # optional; a file holds one series

# BASE_QUOTE[_SETTLE]-TF[-CANDLETYPE].EXT, as Freqtrade names its data files.
_FREQTRADE_NAME = re.compile(
    r"^(?P<base>[A-Za-z0-9]+)_(?P<quote>[A-Za-z0-9]+)(?:_[A-Za-z0-9]+)?"
    r"-(?P<tf>\d+[smhdwM])(?:-[a-z_]+)?\.(?:feather|parquet|json|json\.gz|csv)$"
)
_SYMBOL = re.compile(r"^[A-Z0-9]+$")


class BarFileError(ValueError):
    """A bar file that cannot be read, or whose symbol / timeframe is unknown."""


@dataclass(frozen=True)
class BarFile:
    """The bars of one file, with the series they belong to."""

    frame: pd.DataFrame
    symbol: str
    tf: str

    def __len__(self) -> int:
        return len(self.frame)


def read_bar_file(path: str | Path, symbol: str | None = None, tf: str | None = None) -> BarFile:
    """Read a bar file; ``symbol`` and ``tf`` override what its name says."""
    path = Path(path)
    if not path.is_file():
        raise BarFileError(f"bar file not found: {path}")
    named_symbol, named_tf = parse_freqtrade_name(path.name)
    symbol = normalize_symbol(symbol) if symbol else named_symbol
    tf = tf or named_tf
    if symbol is None or tf is None:
        raise BarFileError(
            f"cannot infer symbol and timeframe from the file name {path.name!r} "
            "(expected a Freqtrade name like BTC_USDT-1h.feather); pass --symbol and --tf"
        )
    if tf not in TIMEFRAME_MS:
        raise BarFileError(
            f"unknown timeframe {tf!r} for {path.name}; expected one of {list(TIMEFRAME_MS)}"
        )
    return BarFile(frame=_read_frame(path), symbol=symbol, tf=tf)


def parse_freqtrade_name(name: str) -> tuple[str | None, str | None]:
    """(symbol, tf) of a Freqtrade data file name, or (None, None)."""
    match = _FREQTRADE_NAME.match(name)
    if match is None:
        return None, None
    return (match["base"] + match["quote"]).upper(), match["tf"]


def normalize_symbol(symbol: str) -> str:
    """``BTC/USDT``, ``btc_usdt``, ``BTC/USDT:USDT`` -> ``BTCUSDT``."""
    pair = symbol.split(":", 1)[0]
    cleaned = re.sub(r"[/_\-]", "", pair).upper()
    if not _SYMBOL.match(cleaned):
        raise BarFileError(f"invalid symbol {symbol!r}: letters and digits expected")
    return cleaned


def _read_frame(path: Path) -> pd.DataFrame:
    reader = _reader_for(path.name.lower())
    if reader is None:
        raise BarFileError(f"unsupported bar file type: {path.name} (csv, json, feather, parquet)")
    try:
        raw = reader(path)
    except BarFileError:
        raise
    except (OSError, ValueError) as exc:
        raise BarFileError(f"cannot read {path}: {exc}") from exc
    return _normalize(raw, path)


def _reader_for(name: str) -> Callable[[Path], pd.DataFrame] | None:
    if name.endswith(".feather"):
        return pd.read_feather
    if name.endswith(".parquet"):
        return pd.read_parquet
    if name.endswith((".json", ".json.gz")):
        return _read_freqtrade_json
    if name.endswith(".csv"):
        return pd.read_csv
    return None


def _read_freqtrade_json(path: Path) -> pd.DataFrame:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        rows = json.load(fh)
    if not isinstance(rows, list) or any(not isinstance(r, list) or len(r) != 6 for r in rows):
        raise BarFileError(
            f"{path}: expected a JSON list of [ts_ms, open, high, low, close, volume]"
        )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["ts"] = frame["ts"].astype("int64")
    return frame


def _normalize(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    raw = raw.rename(columns=lambda c: str(c).strip().lower())
    time_column = next((c for c in TIME_COLUMNS if c in raw.columns), None)
    missing = [c for c in PRICE_COLUMNS if c not in raw.columns]
    if time_column is None or missing:
        need = ["ts or date", *missing] if time_column is None else missing
        raise BarFileError(f"{path}: missing column(s) {need}; found {list(raw.columns)}")
    _check_one_symbol(raw, path)
    frame = pd.DataFrame({"ts": _epoch_ms(raw[time_column], path)})
    for column in PRICE_COLUMNS:
        frame[column] = pd.to_numeric(raw[column], errors="coerce").astype(np.float64)
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


def _check_one_symbol(raw: pd.DataFrame, path: Path) -> None:
    for column in SYMBOL_COLUMNS:
        if column in raw.columns:
            found = sorted({str(v) for v in raw[column].dropna().unique()})
            if len(found) > 1:
                shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
                raise BarFileError(
                    f"{path}: bars of {len(found)} symbols in one file ({shown}): "
                    "pass one file per series"
                )


def _epoch_ms(column: pd.Series, path: Path) -> np.ndarray:
    """Epoch milliseconds from datetimes, date strings or numbers (taken as ms)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = column if column.dt.tz is not None else column.dt.tz_localize("UTC")
        return stamps.dt.as_unit("ms").astype("int64").to_numpy()
    if pd.api.types.is_numeric_dtype(column):
        return column.astype("int64").to_numpy()
    try:
        parsed = pd.to_datetime(column, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise BarFileError(f"{path}: cannot parse times in column {column.name!r}: {exc}") from exc
    return parsed.dt.as_unit("ms").astype("int64").to_numpy()
