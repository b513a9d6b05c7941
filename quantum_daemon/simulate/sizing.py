"""The simulation's sizer desk: every live ``rl_sizer`` version sizes the
ensemble of each bar, one worker call per bar for all of them, as the live
inference worker sizes it after pooling the active forecasters
(``InferenceWorker.size``; both decide through ``models.sizer_book``).

The sizer's decision at a bar needs that bar's ensemble, which the trust
weights of that moment decide, so it cannot be batched over a span as the
forecasters are; each version's book is carried from bar to bar here, as the
live worker keeps it per series.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from quantum_daemon.core.ensemble import EnsembleForecast
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.signals import RecordedSignals
from quantum_daemon.models.sizer_book import SizerBook
from quantum_daemon.simulate.inputs import SimulationSeries
from quantum_daemon.simulate.predict_job import SizeRequest, SizeSpec, size_bar
from quantum_daemon.simulate.records import (
    BarRecord,
    Prediction,
    TimelineEntry,
    VersionRecord,
    signal_view,
)
from quantum_daemon.training.executor import JobOutcome

BookKey = tuple[str, str, str]  # model_id, version, symbol


class SizingDesk:
    """Mixed into ``Simulation``, whose state it shares."""

    cfg: Config
    series: dict[tuple[str, str], SimulationSeries]
    cost_rate: float
    now_ms: int
    books: dict[BookKey, SizerBook]
    bars: dict[tuple[str, str], list[BarRecord]]
    timeline: list[TimelineEntry]
    live_versions: Callable[[str], list[tuple[str, VersionRecord]]]
    _run_all: Callable[[Sequence[Any], Callable[[Any], Any]], Awaitable[list[JobOutcome]]]

    async def _size(
        self,
        index: dict[tuple[str, str], int],
        pooled: dict[tuple[str, str], EnsembleForecast | None],
    ) -> None:
        """Each live sizer's position at the bar, on that bar's ensemble."""
        asked: list[tuple[VersionRecord, int, SizeRequest]] = []
        live: set[tuple[str, str]] = set()
        for key, i in index.items():
            sizers = [r for _, r in self.live_versions(key[0]) if r.family in SIZER_FAMILIES]
            live.update((r.model_id, r.version) for r in sizers)
            ensemble = pooled.get(key)
            if ensemble is None:
                continue  # the live worker has nothing to size either
            for record in sizers:
                if i >= record.live_from:
                    asked.append((record, i, self._size_request(record, key, i, ensemble)))
        self.books = {k: b for k, b in self.books.items() if (k[0], k[1]) in live}
        if not asked:
            return
        spec = SizeSpec(f"size-{self.now_ms}", tuple(r for _, _, r in asked), self.cost_rate)
        [outcome] = await self._run_all([spec], size_bar)
        for n, (record, i, request) in enumerate(asked):
            if not outcome.ok:
                self.timeline.append(
                    TimelineEntry(self.now_ms, "prediction_failed", record.model_id,
                                  record.version, outcome.reason or outcome.status)
                )  # fmt: skip
                record.predictions[i] = Prediction(math.nan, math.nan, None)
                continue
            held: SizerBook = outcome.result[n]
            self.books[request.key] = held
            record.predictions[i] = Prediction(request.mu, request.p_up, held.position)

    def _size_request(
        self, record: VersionRecord, key: tuple[str, str], i: int, ensemble: EnsembleForecast
    ) -> SizeRequest:
        bars = self.series[key].bars
        begin = max(0, i - self.cfg.inference.context_bars)
        book_key = (record.model_id, record.version, key[0])
        return SizeRequest(
            key=book_key,
            path=record.path,
            bars=bars.slice(begin, i + 1),
            mu=ensemble.mu,
            p_up=ensemble.p_up,
            held=self.books.get(book_key),
        )

    def recorded_signals(self, key: tuple[str, str], last_ts: int) -> RecordedSignals:
        """The ensemble signals the simulated daemon published for the series
        up to ``last_ts``: what ``rl_sizer``'s training job reads live."""
        rows = [
            (r.ts, view[0], view[1])
            for r in self.bars[key]
            if (view := signal_view(r.signal)) is not None
        ]
        return RecordedSignals.from_rows(rows).until(last_ts)

