"""The inference worker process: live models held in memory, asked once per bar.

``worker_main`` is the entry of a ``spawn`` process. It pins its thread
counts and configures logging before anything imports numpy, then loads the
``active`` version and the ``max_candidates`` newest ``candidate`` versions
of every model in the registry (each artifact sha256-checked by ``artifacts.load_version``; a
refused one is reported back, never loaded) and serves requests from its
pipe: for a ``PredictRequest`` it reads the series' last bars from the bar
store (WAL: reading never blocks ingest's writer), computes the features of
that window once (``features.shared_features``), and asks every live model of
the series for ``mu``, ``p_up`` and, for position families, a position.
``rl_sizer`` sizes the trust-weighted ensemble of the active forecasters
(``ensemble.combine``, each bar under its weights from the request:
``PredictRequest.bar_weights``), keeping its book per series in memory.

Before each request the worker compares the registry's state stamp (mtime
and size of every ``state.json``) with the one it loaded from; a change
(a promotion, a retirement, a new candidate) reloads the models that
changed and sends a ``LoadReport``.

Model libraries (torch, xgboost, lightgbm, stable-baselines3) are imported
here only, lazily, by the families this process loads.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantum_daemon.inference.messages import (
    ACTIVE,
    CANDIDATE,
    MULTI_SYMBOL,
    LoadedModel,
    LoadProblem,
    LoadReport,
    ModelAnswer,
    PredictAnswer,
    PredictRequest,
    RequestFailed,
    WorkerReply,
    WorkerSettings,
)
from quantum_daemon.training.worker import WorkerSettings as ProcessSettings
from quantum_daemon.training.worker import initialize_worker

if TYPE_CHECKING:
    import numpy as np

    from quantum_daemon.domain.bars import Bars
    from quantum_daemon.storage.bar_store import BarStore
    from quantum_daemon.storage.registry.registry import Registry

SIZER_FAMILIES = frozenset({"rl_sizer"})  # as ensemble.SIZERS: they size the ensemble
STATE_FILE = "state.json"
IDLE_CHECK_S = 1.0  # how often an idle worker looks for registry changes


def worker_main(conn: Connection, settings: WorkerSettings) -> None:
    """Process entry: set up, report the loaded models, then serve the pipe
    until it closes or a ``None`` arrives."""
    initialize_worker(
        ProcessSettings(
            name="inference",
            threads=settings.threads,
            seed=settings.seed,
            log_level=settings.log_level,
            log_format=settings.log_format,
            use_gpu=False,
        )
    )
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the daemon decides when its worker stops
    server = InferenceServer(settings)
    conn.send(server.refresh())
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
class LiveModel:
    """A loaded version and what answering with it needs."""

    info: LoadedModel
    model: Any

    @property
    def is_sizer(self) -> bool:
        return self.info.family in SIZER_FAMILIES


@dataclass
class SizerBook:
    """A sizer's account on one series: the book after its last decision."""

    last_ts: int
    position: float
    book: Any  # sizing_env.Book


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
        new = len(_newer(bars.ts, after_ts, max_new))
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
        return _concat(window, new) if len(new) else window


@dataclass
class InferenceServer:
    """The worker's state: loaded models, the registry stamp, sizer books."""

    settings: WorkerSettings
    models: dict[tuple[str, str], LiveModel] = field(default_factory=dict)
    stamp: tuple[tuple[str, int, int], ...] | None = None
    failed: dict[tuple[str, str], LoadProblem] = field(default_factory=dict)
    books: dict[tuple[str, str, str], SizerBook] = field(default_factory=dict)
    reported: tuple[object, ...] | None = None

    def __post_init__(self) -> None:
        from quantum_daemon.storage.bar_store import BarStore
        from quantum_daemon.storage.registry.registry import Registry

        self.log = _logger()
        self.registry: Registry = Registry(Path(self.settings.data_dir))
        self.store: BarStore = BarStore(self.settings.store_path)
        self.windows = BarWindows(self.store, self.settings.context_bars)
        self.overrides = dict(self.settings.family_classes)

    # -- requests ------------------------------------------------------------
    def handle(self, message: object) -> list[WorkerReply]:
        replies: list[WorkerReply] = []
        report = self.check_registry()
        if report is not None:
            replies.append(report)
        if isinstance(message, PredictRequest):
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
            return _answer(request, bars, _newer(bars.ts, request.after_ts, 1), (), (), started)
        bars = self.windows.read(request.symbol, request.tf, request.after_ts, request.max_bars)
        idx = _newer(bars.ts, request.after_ts, request.max_bars)
        if idx.size == 0:
            return _answer(request, bars, idx, (), (), started)
        weights = request.bar_weights([int(t) for t in bars.ts[idx]])
        answers, errors = self.ask_models(live, bars, idx, weights)
        return _answer(request, bars, idx, answers, errors, started)

    def live_for(self, symbol: str, tf: str) -> list[LiveModel]:
        """The series' models, every version of a stage (a model may have
        several candidates); per family and stage, a model of this symbol
        wins over a multi-symbol one."""
        of_series = [
            m
            for m in self.models.values()
            if m.info.tf == tf and m.info.symbol in (symbol, MULTI_SYMBOL)
        ]
        chosen: dict[tuple[str, str], str] = {}  # (family, stage) -> model_id
        for live in sorted(of_series, key=lambda m: m.info.symbol == symbol):
            chosen[(live.info.family, live.info.stage)] = live.info.model_id
        return [m for m in of_series if chosen[(m.info.family, m.info.stage)] == m.info.model_id]

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
        with shared_features(bars):
            for live_model in [m for m in live if not m.is_sizer]:
                _collect(answers, errors, live_model, lambda m=live_model: _forecast(m, bars, idx))
            ensemble = _ensemble_input(answers, weights)
            for sizer in [m for m in live if m.is_sizer]:
                _collect(answers, errors, sizer, lambda m=sizer: self.size(m, bars, idx, ensemble))
        return answers, errors

    # -- the sizer -------------------------------------------------------------
    def size(
        self,
        sizer: LiveModel,
        bars: Bars,
        idx: np.ndarray,
        ensemble: tuple[list[float], list[float]] | None,
    ) -> ModelAnswer:
        """The sizer's positions for the ensemble at ``idx``: live sizing with
        a book kept per series when the family offers ``decide``, else its
        ``predict`` (which rolls a fresh book from ``idx[0]``)."""
        if ensemble is None:
            raise RuntimeError("no active forecaster to size")
        mu, p_up = ensemble
        if not hasattr(sizer.model, "decide"):
            return replace(_forecast(sizer, bars, idx), mu=tuple(mu), p_up=tuple(p_up))
        from quantum_daemon.models.rl_sizer import volatility

        vol = volatility(bars, idx)
        positions = [
            self._decide(sizer, bars, int(i), mu[k], p_up[k], float(vol[k]))
            for k, i in enumerate(idx)
        ]
        return _model_answer(sizer, tuple(mu), tuple(p_up), tuple(positions))

    def _decide(
        self, sizer: LiveModel, bars: Bars, i: int, mu: float, p_up: float, vol: float
    ) -> float:
        from quantum_daemon.models.sizing_env import Book

        key = (sizer.info.model_id, sizer.info.version, bars.symbol)
        held = self.books.get(key)
        book = Book() if held is None else held.book
        if held is not None and i > 0 and int(bars.ts[i - 1]) == held.last_ts:
            asset = float(bars.close[i] / bars.close[i - 1] - 1.0)
            book, _ = book.hold(held.position, asset, self.settings.cost_rate)
        position = float(sizer.model.decide(book, mu, p_up, vol))
        self.books[key] = SizerBook(int(bars.ts[i]), position, book)
        return position

    # -- loading -----------------------------------------------------------------
    def refresh(self) -> LoadReport:
        """Hold exactly the wanted versions: keep the loaded ones, load the
        new ones, drop the rest. A version that failed to load is not tried
        again by this worker."""
        started = time.perf_counter()
        self.stamp = registry_stamp(self.registry.root)
        wanted = self.wanted()
        kept = {key: self.models[key] for key in wanted if key in self.models}
        for key, stage in wanted.items():
            if key in kept:
                kept[key].info = _with_stage(kept[key].info, stage)
            elif key not in self.failed:
                loaded = self.load(key[0], key[1], stage)
                if loaded is not None:
                    kept[key] = loaded
        self.models = kept
        self.books = {k: b for k, b in self.books.items() if (k[0], k[1]) in kept}
        _pin_torch_threads(self.settings.threads)
        report = LoadReport(
            pid=os.getpid(),
            loaded=tuple(m.info for m in kept.values()),
            problems=tuple(p for k, p in self.failed.items() if k in wanted),
            load_s=time.perf_counter() - started,
        )
        if (report.loaded, report.problems) != self.reported:
            self.log.info(
                "inference.models_loaded",
                models=[f"{m.model_id}@{m.version}:{m.stage}" for m in report.loaded],
                problems=len(report.problems),
                seconds=round(report.load_s, 3),
            )
        self.reported = (report.loaded, report.problems)
        return report

    def check_registry(self) -> LoadReport | None:
        """A new report when the registry changed what this worker holds
        (most registry writes, e.g. confirming published events, change nothing)."""
        if registry_stamp(self.registry.root) == self.stamp:
            return None
        before = self.reported
        report = self.refresh()
        return None if (report.loaded, report.problems) == before else report

    def wanted(self) -> dict[tuple[str, str], str]:
        """(model_id, version) -> stage: every active version and each
        model's ``max_candidates`` newest candidates (the daemon retires
        older ones as superseded)."""
        wanted: dict[tuple[str, str], str] = {}
        for model_id in self.registry.model_ids():
            infos = self.registry.versions(model_id)
            for info in infos:
                if info.stage == ACTIVE:
                    wanted[(model_id, info.version)] = ACTIVE
            candidates = sorted(i.version for i in infos if i.stage == CANDIDATE)
            for version in candidates[-self.settings.max_candidates :]:
                wanted[(model_id, version)] = CANDIDATE
        return wanted

    def load(self, model_id: str, version: str, stage: str) -> LiveModel | None:
        from quantum_daemon.storage.artifacts import ArtifactCorrupt

        path = self.registry.version_path(model_id, version)
        try:
            model, meta = self.load_model(path)
        except ArtifactCorrupt as exc:
            self._failed(model_id, version, str(exc), refused=True)
            return None
        except Exception as exc:  # an unknown family, a library error: reported, not fatal
            self._failed(model_id, version, f"{type(exc).__name__}: {exc}", refused=False)
            return None
        info = LoadedModel(
            model_id=model_id,
            family=str(meta["family"]),
            symbol=str(meta.get("symbol") or model_id.rsplit("_", 2)[1]),
            tf=str(meta.get("tf") or model_id.rsplit("_", 2)[2]),
            version=version,
            stage=stage,
            horizon=int(meta.get("horizon") or self.settings.horizon),
        )
        return LiveModel(info, model)

    def _failed(self, model_id: str, version: str, reason: str, refused: bool) -> None:
        self.failed[(model_id, version)] = LoadProblem(model_id, version, reason, refused)
        event = "model.load_refused" if refused else "inference.load_failed"
        self.log.warning(event, model_id=model_id, version=version, reason=reason)

    def load_model(self, path: Path) -> tuple[Any, Mapping[str, Any]]:
        """Checksums first, then the model, the way the daemon's own loader
        does it (``families.load_model``); a test-only override replaces the
        family's class."""
        from quantum_daemon.storage.artifacts import read_metadata

        override = self.overrides.get(str(read_metadata(path).get("family")))
        if override is None:
            from quantum_daemon.models.families import load_model

            return load_model(path)
        from quantum_daemon.storage.artifacts import load_version

        stored = load_version(path)
        module, _, name = override.partition(":")
        cls = getattr(importlib.import_module(module), name)
        return cls.load(stored.path, stored.metadata), stored.metadata


# -- pure helpers ----------------------------------------------------------------


def registry_stamp(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(model_id, mtime_ns, size) of every model's ``state.json``: changes
    with every registry transition, costs one ``stat`` per model."""
    stamps: list[tuple[str, int, int]] = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return ()
    for entry in entries:
        try:
            st = os.stat(os.path.join(entry.path, STATE_FILE))
        except (FileNotFoundError, NotADirectoryError):
            continue
        stamps.append((entry.name, st.st_mtime_ns, st.st_size))
    return tuple(sorted(stamps))


def _concat(a: Bars, b: Bars) -> Bars:
    import numpy as np

    from quantum_daemon.domain.bars import Bars

    columns = ("ts", "open", "high", "low", "close", "volume")
    joined = {c: np.concatenate([getattr(a, c), getattr(b, c)]) for c in columns}
    return Bars(a.symbol, a.tf, **joined)


def _newer(ts: np.ndarray, after_ts: int | None, limit: int) -> np.ndarray:
    """Indices of the bars after ``after_ts`` (the newest bar when None), at most ``limit``."""
    import numpy as np

    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    if after_ts is None:
        return np.array([len(ts) - 1], dtype=np.int64)
    return np.flatnonzero(ts > after_ts)[-limit:]


def _forecast(live: LiveModel, bars: Bars, idx: np.ndarray) -> ModelAnswer:
    fc = live.model.predict(bars, idx)
    position = None if fc.position is None else tuple(float(v) for v in fc.position)
    return _model_answer(
        live, tuple(float(v) for v in fc.mu), tuple(float(v) for v in fc.p_up), position
    )


def _collect(
    answers: list[ModelAnswer], errors: list[tuple[str, str]], live: LiveModel, ask: Any
) -> None:
    """Run one model; its failure is recorded, the others still answer."""
    try:
        answer: ModelAnswer = ask()
        _check_finite(answer)
        answers.append(answer)
    except Exception as exc:
        errors.append((live.info.model_id, f"{type(exc).__name__}: {exc}"))
        _logger().debug(
            "inference.model_failed",
            model_id=live.info.model_id,
            error=repr(exc),
            trace=traceback.format_exc(limit=3),
        )


def _check_finite(answer: ModelAnswer) -> None:
    values = [*answer.mu, *answer.p_up, *(answer.position or ())]
    if not all(math.isfinite(v) for v in values):
        raise ValueError("non-finite forecast")
    if not all(0.0 <= p <= 1.0 for p in answer.p_up):
        raise ValueError("p_up outside [0, 1]")


def _ensemble_input(
    answers: Sequence[ModelAnswer], weights: Sequence[Mapping[str, float]]
) -> tuple[list[float], list[float]] | None:
    """Per bar, the pool of the active forecasters under that bar's trust
    ``weights``: what the daemon publishes as the signal, and what the sizer
    sizes."""
    from quantum_daemon.core.ensemble import MemberForecast, combine

    active = [a for a in answers if a.stage == ACTIVE and a.family not in SIZER_FAMILIES]
    if not active:
        return None
    mus, ps = [], []
    for k in range(len(active[0].mu)):
        pooled = combine(
            [MemberForecast(a.family, a.model_id, a.version, a.mu[k], a.p_up[k]) for a in active],
            weights[k],
        )
        mus.append(pooled.mu)
        ps.append(pooled.p_up)
    return mus, ps


def _model_answer(
    live: LiveModel,
    mu: tuple[float, ...],
    p_up: tuple[float, ...],
    position: tuple[float, ...] | None,
) -> ModelAnswer:
    info = live.info
    return ModelAnswer(
        info.model_id, info.family, info.version, info.stage, info.horizon, mu, p_up, position
    )


def _answer(
    request: PredictRequest,
    bars: Bars,
    idx: np.ndarray,
    answers: Sequence[ModelAnswer],
    errors: Sequence[tuple[str, str]],
    started: tuple[float, float],
) -> PredictAnswer:
    return PredictAnswer(
        request_id=request.request_id,
        symbol=request.symbol,
        tf=request.tf,
        ts=tuple(int(v) for v in bars.ts[idx]),
        close=tuple(float(v) for v in bars.close[idx]),
        models=tuple(answers),
        errors=tuple(errors),
        worker_s=time.perf_counter() - started[0],
        cpu_s=time.process_time() - started[1],
    )


def _with_stage(info: LoadedModel, stage: str) -> LoadedModel:
    return info if info.stage == stage else replace(info, stage=stage)


def _pin_torch_threads(threads: int) -> None:
    """torch sizes its pools at import; a family that imported it needs telling."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _logger() -> Any:
    from quantum_daemon.runtime.logs import get_logger

    return get_logger()
