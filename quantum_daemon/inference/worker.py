"""The inference worker process: live models held in memory, asked once per bar.

``worker_main`` is the entry of a ``spawn`` process. It pins its thread
counts and configures logging before anything imports numpy, then loads the
live versions of every model (``loading``: the ``active`` version and the
``max_candidates`` newest ``candidate`` versions; a version whose artifacts
fail their checksum is reported back, never loaded) and serves requests from
its pipe: for each ``PredictRequest`` (alone or in a ``PredictBatch``, one
registry check for the batch) it reads the series' last bars from the bar
store (WAL: reading never blocks ingest's writer), computes the features of
that window once (``features.shared_features``; the trailing-window
columns of the new bars' rows only), and asks every live model of the series
for ``mu``, ``p_up`` and, for position families, a position. ``rl_sizer``
sizes the trust-weighted ensemble of the active forecasters
(``ensemble.combine``, each bar under its weights from the request:
``PredictRequest.bar_weights``), keeping its book per series in memory. A
version fitted with context features (``[features] context``) gets its
reference symbols' bars over the same window from the store; one whose
reference series has no bars there answers nothing and says why
(``ContextMissing``, in the answer's errors).

Before each request, and every second while idle, the worker looks at the
registry's state stamp; a change reloads the models that changed and sends
a ``LoadReport``.

Model libraries (torch, xgboost, lightgbm, stable-baselines3) are imported
here only, lazily, by the families this process loads.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantum_daemon.inference.answers import (
    Ensemble,
    collect,
    concat_bars,
    ensemble_input,
    forecast,
    model_answer,
    newer_indices,
    predict_answer,
)
from quantum_daemon.inference.loading import LiveModel, ModelLoader, VersionKey
from quantum_daemon.inference.messages import (
    MULTI_SYMBOL,
    BatchAnswer,
    InferenceWorkerSettings,
    LoadReport,
    ModelAnswer,
    PredictAnswer,
    PredictBatch,
    PredictRequest,
    RequestFailed,
    StartFailed,
    WorkerReply,
)
from quantum_daemon.models.sizer_book import SizerBook, next_decision
from quantum_daemon.training.worker import TrainingWorkerSettings, initialize_worker

if TYPE_CHECKING:
    import numpy as np

    from quantum_daemon.domain.bars import Bars
    from quantum_daemon.storage.bar_store import BarStore

IDLE_CHECK_S = 1.0  # how often an idle worker looks for registry changes


def worker_main(conn: Connection, settings: InferenceWorkerSettings) -> None:
    """Process entry: set up, report the loaded models, then serve the pipe
    until it closes or a ``None`` arrives."""
    initialize_worker(
        TrainingWorkerSettings(
            name="inference",
            threads=settings.threads,
            seed=settings.seed,
            log_level=settings.log_level,
            log_format=settings.log_format,
            use_gpu=False,
        )
    )
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the daemon decides when its worker stops
    try:
        server = InferenceServer(settings)
        report = server.refresh()
    except Exception as exc:  # tell the daemon why before the traceback ends the process
        with contextlib.suppress(OSError, ValueError):
            conn.send(StartFailed(f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(report)
    serve(conn, server)


def serve(conn: Connection, server: InferenceServer) -> None:
    """Answer requests; while idle, look at the registry every second so that
    a promotion is loaded before the next bar arrives, not when it does."""
    while True:
        try:
            if not conn.poll(IDLE_CHECK_S):
                report = server.check_registry()
                if report is not None:
                    conn.send(report)
                continue
            message = conn.recv()
        except (EOFError, OSError):
            return  # the daemon is gone
        if message is None:
            return
        for reply in server.handle(message):
            conn.send(reply)


@dataclass
class BarWindows:
    """The last bars of each series, kept between requests.

    A request reads only the bars stored since the window's newest one, and
    the series' bar count: when the count says a bar was stored out of order
    (inside the window), the window is read again. What a request gets is
    always the last ``context`` bars before its first new bar plus the new
    bars, exactly what a fresh read of the store would give.
    """

    store: BarStore
    context: int
    held: dict[tuple[str, str], tuple[Bars, int]] = field(default_factory=dict)

    def read(self, symbol: str, tf: str, after_ts: int | None, max_new: int) -> Bars:
        count = self.store.count(symbol, tf)
        bars = self._extended(symbol, tf, count)
        if bars is None:
            bars = self.store.read_bars(symbol, tf, last_n=self.context + max_new)
        new = len(newer_indices(bars.ts, after_ts, max_new))
        needed = bars.slice(max(0, len(bars) - self.context - new), None)
        self.held[(symbol, tf)] = (bars.slice(max(0, len(bars) - self.context), None), count)
        return needed

    def _extended(self, symbol: str, tf: str, count: int) -> Bars | None:
        """The held window with the bars stored since, or None when it is out of date."""
        held = self.held.get((symbol, tf))
        if held is None or len(held[0]) == 0:
            return None
        window, held_count = held
        new = self.store.read_bars(symbol, tf, start_ms=int(window.ts[-1]) + 1)
        if held_count + len(new) != count:
            return None
        return concat_bars(window, new) if len(new) else window


@dataclass
class InferenceServer:
    """The worker's state: loaded models, sizer books, bar windows."""

    settings: InferenceWorkerSettings
    models: dict[VersionKey, LiveModel] = field(default_factory=dict)
    books: dict[tuple[str, str, str], SizerBook] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from quantum_daemon.storage.bar_store import BarStore
        from quantum_daemon.storage.registry.registry import Registry

        self.log = _logger()
        self.registry = Registry(Path(self.settings.data_dir))
        self.loader = ModelLoader(self.settings, self.registry, self.log)
        self.store: BarStore = BarStore(self.settings.store_path)
        self.windows = BarWindows(self.store, self.settings.context_bars)

    # -- requests ------------------------------------------------------------
    def handle(self, message: object) -> list[WorkerReply]:
        replies: list[WorkerReply] = []
        report = self.check_registry()
        if report is not None:
            replies.append(report)
        if isinstance(message, PredictBatch):
            replies.append(
                BatchAnswer(message.request_id, tuple(self.answer(r) for r in message.requests))
            )
        elif isinstance(message, PredictRequest):
            replies.append(self.answer(message))
        return replies

    def answer(self, request: PredictRequest) -> PredictAnswer | RequestFailed:
        try:
            return self.predict(request)
        except Exception as exc:  # the request fails, the worker lives on
            self.log.warning("inference.request_failed", error=repr(exc), exc_info=True)
            return RequestFailed(request.request_id, f"{type(exc).__name__}: {exc}")

    def predict(self, request: PredictRequest) -> PredictAnswer:
        started = (time.perf_counter(), time.process_time())
        live = self.live_for(request.symbol, request.tf)
        if not live:  # nothing to ask: just say which bar is the newest
            bars = self.store.read_bars(request.symbol, request.tf, last_n=1)
            idx = newer_indices(bars.ts, request.after_ts, 1)
            return predict_answer(request, bars, idx, (), (), started)
        bars = self.windows.read(request.symbol, request.tf, request.after_ts, request.max_bars)
        idx = newer_indices(bars.ts, request.after_ts, request.max_bars)
        if idx.size == 0:
            return predict_answer(request, bars, idx, (), (), started)
        weights = request.bar_weights([int(t) for t in bars.ts[idx]])
        self.give_reference(live, bars)
        answers, errors = self.ask_models(live, bars, idx, weights)
        return predict_answer(request, bars, idx, answers, errors, started)

    def live_for(self, symbol: str, tf: str) -> list[LiveModel]:
        """The series' models, every version of a stage (a model may have
        several candidates); per family and stage, a model of this symbol
        wins over a multi-symbol one."""
        of_series = [
            m
            for m in self.models.values()
            if m.info.tf == tf and (m.info.symbol == symbol or _answers_for(m, symbol))
        ]
        chosen: dict[tuple[str, str], str] = {}  # (family, stage) -> model_id
        for live in sorted(of_series, key=lambda m: m.info.symbol == symbol):
            chosen[(live.info.family, live.info.stage)] = live.info.model_id
        return [m for m in of_series if chosen[(m.info.family, m.info.stage)] == m.info.model_id]

    def give_reference(self, live: Sequence[LiveModel], bars: Bars) -> None:
        """Hand every context version its reference symbols' bars over ``bars``' span."""
        from quantum_daemon.core.context_features import ContextSpec, FeatureContext
        from quantum_daemon.models.families import reference_symbols, use_context

        needed = sorted({s for m in live for s in reference_symbols(m.model)})
        if not needed or len(bars) == 0:
            return
        start, end = int(bars.ts[0]), int(bars.ts[-1]) + 1
        reference = {s: self.store.read_bars(s, bars.tf, start, end) for s in needed}
        for model in live:
            use_context(model.model, FeatureContext(ContextSpec(), reference))

    def ask_models(
        self,
        live: Sequence[LiveModel],
        bars: Bars,
        idx: np.ndarray,
        weights: Sequence[Mapping[str, float]],
    ) -> tuple[list[ModelAnswer], list[tuple[str, str]]]:
        """Every live model on the bars at ``idx``; the sizer sizes the pool
        of the active forecasters under each bar's ``weights``."""
        from quantum_daemon.core.features import shared_features

        answers: list[ModelAnswer] = []
        errors: list[tuple[str, str]] = []
        with shared_features(bars, first_row=int(idx.min())):
            for model in [m for m in live if not m.is_sizer]:
                collect(answers, errors, model, partial(forecast, model, bars, idx), self.log)
            ensemble = ensemble_input(answers, weights)
            for sizer in [m for m in live if m.is_sizer]:
                ask = partial(self.size, sizer, bars, idx, ensemble)
                collect(answers, errors, sizer, ask, self.log)
        return answers, errors

    # -- the sizer -------------------------------------------------------------
    def size(
        self, sizer: LiveModel, bars: Bars, idx: np.ndarray, ensemble: Ensemble | None
    ) -> ModelAnswer:
        """The sizer's positions for the ensemble at ``idx``: live sizing with
        a book kept per series when the family offers ``decide``, else its
        ``predict`` (which rolls a fresh book from ``idx[0]``)."""
        if ensemble is None:
            raise RuntimeError("no active forecaster to size")
        mu, p_up = ensemble
        if not hasattr(sizer.model, "decide"):
            return replace(forecast(sizer, bars, idx), mu=tuple(mu), p_up=tuple(p_up))
        from quantum_daemon.models.rl_sizer import volatility

        vol = volatility(bars, idx)
        positions = [
            self._decide(sizer, bars, int(i), mu[k], p_up[k], float(vol[k]))
            for k, i in enumerate(idx)
        ]
        return model_answer(sizer, tuple(mu), tuple(p_up), tuple(positions))

    def _decide(
        self, sizer: LiveModel, bars: Bars, i: int, mu: float, p_up: float, vol: float
    ) -> float:
        key = (sizer.info.model_id, sizer.info.version, bars.symbol)
        held = next_decision(
            sizer.model, self.books.get(key), bars, i, (mu, p_up, vol), self.settings.cost_rate
        )
        self.books[key] = held
        return held.position

    # -- the models held -----------------------------------------------------------
    def refresh(self) -> LoadReport:
        """Hold exactly the wanted versions (``loading``); drop the books of the others."""
        started = time.perf_counter()
        self.models = self.loader.hold(self.models)
        self.books = {k: b for k, b in self.books.items() if (k[0], k[1]) in self.models}
        _pin_torch_threads(self.settings.threads)
        return self.loader.report(self.models, started)

    def check_registry(self) -> LoadReport | None:
        """A new report when the registry changed what this worker holds
        (most registry writes, e.g. confirming published events, change nothing)."""
        if not self.loader.changed():
            return None
        before = self.loader.reported
        report = self.refresh()
        return None if (report.loaded, report.problems) == before else report


def _answers_for(live: LiveModel, symbol: str) -> bool:
    """A multi-symbol model answers for the symbols it was fitted on."""
    return live.info.symbol == MULTI_SYMBOL and symbol in getattr(live.model, "symbols", ())


def _pin_torch_threads(threads: int) -> None:
    """torch sizes its pools at import; a family that imported it needs telling."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _logger() -> Any:
    from quantum_daemon.runtime.logs import get_logger

    return get_logger()
