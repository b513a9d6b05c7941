"""Global models in the simulation (``{family}_multi_{TF}``, ``[models.multi]``).

A multi model of the configured timeframe whose symbols are all simulated
series runs in the loop beside the single-symbol models, as it runs live:
one job over every symbol's bars, one version, and per series a *view* of
that version (a ``VersionRecord`` with the series' symbol) that holds the
version's forecasts, settling lag and losses on that series. The version's
own record (``versions[(model_id, version)]``) holds the mean over symbols
of the views' losses per bar, and the model's record the mean of their
returns, as ``storage.prediction_records`` keeps them live. A series'
ensemble holds one model per family and stage, the series' own
single-symbol model winning over a multi one (``inference.worker.live_for``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.ids import MULTI_SYMBOL, ModelKey
from quantum_daemon.simulate.records import VersionRecord


def multi_models(
    cfg: Config, symbols: Sequence[str], tf: str
) -> dict[str, tuple[str, ...]]:
    """The configured multi models the simulation can run: of its timeframe,
    every symbol among the simulated series."""
    return {
        model_id: held
        for model_id, held in cfg.models.multi.models.items()
        if ModelKey.parse(model_id).tf == tf and set(held) <= set(symbols)
    }


class MultiDesk:
    """Mixed into ``Simulation``, whose state it shares."""

    keys: list[ModelKey]
    newest: dict[str, str]
    versions: dict[tuple[str, str], VersionRecord]
    multi: dict[str, tuple[str, ...]]
    views: dict[tuple[str, str, str], VersionRecord]  # (model_id, version, symbol)
    _multi_nets: dict[tuple[str, str, int], dict[str, float]]

    def keys_of(self, symbol: str) -> list[ModelKey]:
        """The models that answer on ``symbol``'s series: its own and the multi ones."""
        return [
            k for k in self.keys if k.symbol == symbol or symbol in self.multi.get(k.model_id, ())
        ]

    def record_of(self, model_id: str, version: str, symbol: str) -> VersionRecord:
        """The version's record on ``symbol``'s series (a multi version's view)."""
        return self.views.get((model_id, version, symbol)) or self.versions[(model_id, version)]

    def newest_of(self, symbol: str) -> dict[str, str]:
        """model_id -> newest version of the series' models, one per family."""
        held = {
            k.model_id: self.newest[k.model_id]
            for k in self.keys_of(symbol)
            if k.model_id in self.newest
        }
        return {m: v for m, v in held.items() if m in one_per_family(list(held), symbol)}

    def note_loss(self, model_id: str, version: str, symbol: str, ts: int, loss: float) -> None:
        """A settled loss: the view's, and the version's mean over its symbols."""
        view = self.views.get((model_id, version, symbol))
        if view is None:
            self.versions[(model_id, version)].losses[ts] = loss
            return
        view.losses[ts] = loss
        symbols = self.multi[model_id]
        known = [
            self.views[(model_id, version, s)].losses[ts]
            for s in symbols
            if ts in self.views[(model_id, version, s)].losses
        ]
        self.versions[(model_id, version)].losses[ts] = float(np.mean(known))

    def record_net(self, model_id: str, version: str, symbol: str, ts: int, net: float) -> float:
        """The return a bar adds to the model's record: a multi model's mean over symbols."""
        if model_id not in self.multi:
            return net
        nets = self._multi_nets.setdefault((model_id, version, ts), {})
        nets[symbol] = net
        return float(np.mean(list(nets.values())))

    def add_views(self, main: VersionRecord, at: Mapping[str, int]) -> list[VersionRecord]:
        """A new multi version's view on each of its symbols' series (``at``:
        the bar index of the training in each series)."""
        views = []
        for symbol, i in at.items():
            view = VersionRecord(
                main.model_id, main.family, symbol, main.version, main.path, i, live_from=i,
                horizon=main.horizon,
            )  # fmt: skip
            self.views[(main.model_id, main.version, symbol)] = view
            views.append(view)
        return views


def one_per_family(model_ids: Sequence[str], symbol: str) -> set[str]:
    """Of several models of one stage, the one per family that answers on
    ``symbol``: the symbol's own model wins over a multi-symbol one."""
    chosen: dict[str, str] = {}
    for model_id in sorted(model_ids, key=lambda m: ModelKey.parse(m).symbol == MULTI_SYMBOL):
        chosen.setdefault(ModelKey.parse(model_id).family, model_id)
    return set(chosen.values())
