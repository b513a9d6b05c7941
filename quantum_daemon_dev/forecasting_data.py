"""The long-horizon forecasting benchmarks (ETT, exchange rate), built at run time.

The CSVs in ``shared/data/forecasting`` are CC BY-ND (ETT): they are read
unmodified and every derived view (split, z-score) lives only in memory.

Protocol (Informer / Autoformer / PatchTST / N-HiTS code bases):

- ETT hourly: train rows [0, 8640), validation [8640, 11520), test
  [11520, 14400); the 15-minute files use four times these borders. Rows past
  the test border are unused.
- exchange_rate: train = int(0.7 N), test = int(0.2 N), validation = the rest.
- Every channel is z-scored with the mean and standard deviation of the
  training rows.
- A window is ``input_size`` rows of input followed by ``horizon`` rows of
  target. Validation and test windows start ``input_size`` rows before their
  border, so the first forecast of a split begins exactly at the border;
  every window whose target lies inside the split is scored (stride 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DATASETS = ("ETTh1", "ETTh2", "ETTm1", "ETTm2", "exchange_rate")
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "forecasting"

_HOURLY_BORDERS = (8640, 11520, 14400)


@dataclass(frozen=True)
class Split:
    """Row range ``[start, stop)`` of the scaled series whose windows belong to
    one split; ``start`` already includes the ``input_size`` rows of context."""

    start: int
    stop: int


@dataclass(frozen=True)
class Benchmark:
    """A scaled multivariate series (rows x channels) and its three splits."""

    name: str
    columns: tuple[str, ...]
    values: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    borders: tuple[int, int, int]

    def split(self, which: str, input_size: int) -> Split:
        """Rows that hold the windows of ``which`` (train, val or test)."""
        train_end, val_end, test_end = self.borders
        if which == "train":
            return Split(0, train_end)
        if which == "val":
            return Split(train_end - input_size, val_end)
        if which == "test":
            return Split(val_end - input_size, test_end)
        raise ValueError(f"unknown split {which!r}; expected train, val or test")

    def window_starts(self, which: str, input_size: int, horizon: int) -> np.ndarray:
        """First row of every window (input then target) inside the split."""
        split = self.split(which, input_size)
        n_windows = split.stop - split.start - input_size - horizon + 1
        if n_windows <= 0:
            raise ValueError(f"{which} split too short for {input_size}+{horizon} rows")
        return np.arange(split.start, split.start + n_windows, dtype=np.int64)


def borders(name: str, n_rows: int) -> tuple[int, int, int]:
    """(train end, validation end, test end) row indices of a dataset."""
    if name in ("ETTh1", "ETTh2"):
        return _HOURLY_BORDERS
    if name in ("ETTm1", "ETTm2"):
        return (
            _HOURLY_BORDERS[0] * 4,
            _HOURLY_BORDERS[1] * 4,
            _HOURLY_BORDERS[2] * 4,
        )
    if name == "exchange_rate":
        n_train, n_test = int(0.7 * n_rows), int(0.2 * n_rows)
        return (n_train, n_rows - n_test, n_rows)
    raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)}")


def load(name: str, data_dir: Path | None = None) -> Benchmark:
    """Read ``{name}.csv``, fit the z-score on the training rows, scale all rows."""
    path = Path(data_dir or DEFAULT_DATA_DIR) / f"{name}.csv"
    frame = pd.read_csv(path)
    columns = tuple(c for c in frame.columns if c != "date")
    raw = frame[list(columns)].to_numpy(dtype=np.float64)
    split_rows = borders(name, len(raw))
    train = raw[: split_rows[0]]
    mean, std = train.mean(axis=0), train.std(axis=0)
    scaled = ((raw - mean) / std).astype(np.float32)
    return Benchmark(name, columns, scaled, mean, std, split_rows)


def naive_forecast(inputs: np.ndarray, horizon: int) -> np.ndarray:
    """The last input value repeated over the horizon: inputs (..., L) -> (..., H)."""
    return np.repeat(inputs[..., -1:], horizon, axis=-1)
