"""Bars as typed arrays: the shape in which training and evaluation see history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Bars:
    """Time-ordered bars of one symbol and timeframe, as parallel arrays.

    ``ts`` is the bar open time in epoch milliseconds UTC (int64); prices and
    volume are float64.
    """

    symbol: str
    tf: str
    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def slice(self, start: int | None, stop: int | None) -> Bars:
        s = slice(start, stop)
        return Bars(
            self.symbol,
            self.tf,
            self.ts[s],
            self.open[s],
            self.high[s],
            self.low[s],
            self.close[s],
            self.volume[s],
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "ts": self.ts,
                "open": self.open,
                "high": self.high,
                "low": self.low,
                "close": self.close,
                "volume": self.volume,
            }
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, symbol: str, tf: str) -> Bars:
        """From a frame with columns ts (epoch ms), open, high, low, close, volume."""
        return cls(
            symbol=symbol,
            tf=tf,
            ts=frame["ts"].to_numpy(dtype=np.int64),
            open=frame["open"].to_numpy(dtype=np.float64),
            high=frame["high"].to_numpy(dtype=np.float64),
            low=frame["low"].to_numpy(dtype=np.float64),
            close=frame["close"].to_numpy(dtype=np.float64),
            volume=frame["volume"].to_numpy(dtype=np.float64),
        )
