"""The one small interface every model family implements (the families are
in ``models/``; ``core`` evaluates and ensembles them through this module).

A family is fitted on a ``TrainSet`` (bars plus the index positions of the
training and validation decision points), answers ``predict`` with a
``Forecast`` (``mu``: expected log return over the next ``horizon`` bars,
``p_up``: probability that it is positive) for given decision indices, and
saves to / loads from a directory in its library's own safe format.

Decision index ``t`` means "at the close of bar t": a family may use bars
``0..t`` only (causality), and the target is ``log(close[t+h] / close[t])``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from quantum_daemon.domain.bars import Bars


@dataclass(frozen=True)
class TrainSet:
    """What a family is fitted on.

    ``train_idx`` and ``val_idx`` are increasing decision indices into
    ``bars``; the splitter guarantees that every train target
    (``t + horizon``) ends before the validation window starts (embargo), so a
    family may use ``bars`` freely up to ``val_idx[-1] + horizon``.
    """

    bars: Bars
    horizon: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    # Called with (step, validation loss) as fitting goes, by the families
    # that validate along the way (trees, torch); it may raise to stop the
    # fit (the tuner's pruning). None: nobody listens.
    on_validation: Callable[[int, float], None] | None = None


@dataclass(frozen=True)
class Forecast:
    """Per decision index: ``mu`` (expected log return over the horizon) and
    ``p_up`` (probability that it is > 0). Position-producing families may also
    fill ``position`` in [-1, 1]. ``q05``/``q50``/``q95``: quantiles of the
    horizon log return where the model has intervals (``core.conformal``)."""

    mu: np.ndarray
    p_up: np.ndarray
    position: np.ndarray | None = None
    q05: np.ndarray | None = None
    q50: np.ndarray | None = None
    q95: np.ndarray | None = None


@dataclass(frozen=True)
class FitInfo:
    """What fitting recorded: best iteration / epoch, validation loss, and any
    family-specific numbers worth keeping in the metadata."""

    best_iteration: int
    val_loss: float
    extra: Mapping[str, Any] = field(default_factory=dict)


class Family(Protocol):
    """A model family: fit, predict, save, load."""

    name: ClassVar[str]

    def fit(self, data: TrainSet) -> FitInfo: ...

    def predict(self, bars: Bars, idx: np.ndarray) -> Forecast: ...

    def save(self, directory: Path) -> list[Path]:
        """Write the artifact file(s) into ``directory``; return their paths."""
        ...

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Family:
        """Rebuild a fitted model from ``save``'s files and its metadata."""
        ...

    def metadata(self) -> dict[str, Any]:
        """JSON-able facts to store beside the artifact (features, params,
        normalization statistics, library versions, seed)."""
        ...
