"""Planted experts for inference tests: models that know the future.

``planted_market`` builds a random walk whose bars carry their own future in
the volume column: ``volume[t] = 1000 + 100 * up_h + 10 * up_1``, where
``up_h`` says whether the close ``horizon`` bars later is higher and ``up_1``
whether the next close is. ``PlantedFamily`` reads it back: while it is the
oracle (bars in ``[from_ts, until_ts)``) it forecasts ``p_up`` 0.95 on the
side that will happen (and, as a position family, holds the position the
next bar rewards); otherwise it guesses (``p_up`` in [0.4, 0.6], a random
position), deterministically from the bar's time. In ``[invert_from_ts,
invert_until_ts)`` (if given) its oracle says the opposite: a planted break.

The worker loads it through its test-only ``family_classes`` hook under a
real family name (``xgb``, ``rl_sizer``, ...). ``install_version`` writes a
checksummed version folder and registers it at the wanted stage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from quantum_daemon.core.promotion import Verdict
from quantum_daemon.domain.bars import Bars
from quantum_daemon.models.base import Forecast
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.registry import Registry
from tests.conftest import make_bars

PLANTED = "tests.planted_family:PlantedFamily"
ARTIFACT = "planted.json"
BASE_VOLUME = 1000.0


def planted_market(n: int, horizon: int, seed: int = 0, symbol: str = "TESTUSDT") -> Bars:
    bars = make_bars(n, seed=seed, symbol=symbol, vol=0.01)
    close = bars.close
    up_h = np.zeros(n)
    up_h[:-horizon] = close[horizon:] > close[:-horizon]
    up_1 = np.zeros(n)
    up_1[:-1] = close[1:] > close[:-1]
    volume = BASE_VOLUME + 100.0 * up_h + 10.0 * up_1
    return Bars(bars.symbol, bars.tf, bars.ts, bars.open, bars.high, bars.low, close, volume)


class PlantedFamily:
    name: ClassVar[str] = "planted"

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast:
        self._hang_once()
        code = np.rint(bars.volume[idx] - BASE_VOLUME).astype(np.int64)
        up_h, up_1 = code // 100 == 1, (code % 100) // 10 == 1
        ts = bars.ts[idx]
        oracle = (ts >= self.state.get("from_ts", 0)) & (ts < self.state.get("until_ts", 2**62))
        guess = _uniform(ts, int(self.state.get("seed", 0)))
        p_up = np.where(oracle, np.where(up_h, 0.95, 0.05), 0.4 + 0.2 * guess)
        inverted = (ts >= self.state.get("invert_from_ts", 2**62)) & (
            ts < self.state.get("invert_until_ts", 2**62)
        )
        p_up = np.where(inverted & oracle, 1.0 - p_up, p_up)
        mu = (p_up - 0.5) * 0.02
        position = None
        if self.state.get("positions"):
            random_side = np.floor(guess * 3.0) - 1.0
            position = np.where(oracle, np.where(up_1, 1.0, -1.0), random_side)
        return Forecast(mu=mu, p_up=p_up, position=position)

    def _hang_once(self) -> None:
        """With ``hang_once`` (a file path): the first call anywhere hangs."""
        marker = self.state.get("hang_once")
        if marker and not Path(marker).exists():
            Path(marker).touch()
            time.sleep(600)

    def save(self, directory: Path) -> list[Path]:
        path = directory / ARTIFACT
        path.write_text(json.dumps(self.state, sort_keys=True))
        return [path]

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> PlantedFamily:
        return cls(json.loads((Path(directory) / ARTIFACT).read_text()))

    def metadata(self) -> dict[str, Any]:
        return dict(self.state)


def _uniform(ts: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic pseudo-random number in [0, 1) per bar time."""
    x = (ts.astype(np.uint64) // np.uint64(1000) + np.uint64(seed * 7919)) * np.uint64(2654435761)
    return (x % np.uint64(1_000_003)).astype(np.float64) / 1_000_003.0


def install_version(
    data_dir: Path,
    family: str,
    state: Mapping[str, Any],
    *,
    symbol: str = "TESTUSDT",
    tf: str = "1h",
    horizon: int = 2,
    stage: str = "active",
    now: datetime | None = None,
) -> str:
    """A planted version of ``{family}_{symbol}_{tf}``, registered at ``stage``
    (``active`` or ``candidate``); returns its version name."""
    model_id = f"{family}_{symbol}_{tf}"
    when = now or datetime(2026, 1, 1, tzinfo=UTC)
    while (artifacts.model_dir(data_dir, model_id) / artifacts.version_name(when)).exists():
        when += timedelta(seconds=1)
    stored = artifacts.write_version(
        data_dir,
        model_id,
        PlantedFamily(state).save,
        {"family": family, "symbol": symbol, "tf": tf, "horizon": horizon, "model": dict(state)},
        when,
    )
    registry = Registry(data_dir)
    registry.register(model_id, stored.version)
    registry.apply_verdict(
        model_id, stored.version, Verdict("candidate", (), stage == "active", f"planted {stage}")
    )
    return stored.version


def brier_gap() -> float:
    """Smallest Brier gap between the oracle (at most 0.05^2) and a guesser
    (at least 0.4^2): what ``trust.recovery_rounds`` needs."""
    return 0.4**2 - 0.05**2
