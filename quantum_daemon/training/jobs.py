"""A training job: a frozen spec in, a frozen result out.

``run_job(spec)`` is the top-level function that every backend runs in a
worker process (the local spawn pool, the GPU worker, Ray): it trains and
evaluates one version with ``quantum_daemon.training.offline`` (which writes the
version folder atomically), then compares the new version head to head with
the model's active version (``promotion.HeadToHead``). The bars travel in the
spec as arrays, so a worker never opens the bar store; so do, for
``rl_sizer``, the ensemble signals the daemon recorded
(``recorded_signals``): the sizer is trained on them, and in the head to head
both versions size that same signal. The reference bars of context features
(``context``) travel the same way. Model libraries are imported inside the
function only: the daemon imports this module.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantum_daemon.core.context_features import ContextMissing, FeatureContext
from quantum_daemon.core.promotion import HeadToHead
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import EvaluationConfig, TuningConfig
from quantum_daemon.domain.ids import MULTI_SYMBOL
from quantum_daemon.domain.signals import RecordedSignals
from quantum_daemon.domain.timeframes import timeframe_ms

if TYPE_CHECKING:
    from quantum_daemon.models.base import Family

# Families whose training is torch: the GPU worker takes them when one exists.
TORCH_FAMILIES = frozenset({"nhits", "patchtst"})


@dataclass(frozen=True)
class ActiveRef:
    """The model's active version when the job was made: the one to beat."""

    version: str
    path: str


@dataclass(frozen=True)
class TrainJobSpec:
    job_id: str
    family: str
    bars: Bars
    data_dir: str
    version_time: datetime  # fixes the version name (``vYYYYMMDD_HHMMSS`` of it)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 42
    horizon: int | None = None  # None: evaluation.horizon
    n_trials: int | None = None  # None: evaluation.n_trials
    timeout_s: float = 900.0
    active: ActiveRef | None = None
    signals: RecordedSignals | None = None  # rl_sizer: the recorded ensemble signal
    tuning: TuningConfig | None = None  # search the family's space first (training.tuning)
    # a multi-symbol model: the bars of every symbol (``bars`` is the first's)
    series: tuple[Bars, ...] = ()
    context: FeatureContext | None = None  # context features: spec and reference bars

    @property
    def symbol(self) -> str:
        return MULTI_SYMBOL if self.series else self.bars.symbol

    @property
    def tf(self) -> str:
        return self.bars.tf

    @property
    def model_id(self) -> str:
        return f"{self.family}_{self.symbol}_{self.tf}"


@dataclass(frozen=True)
class TrainJobResult:
    job_id: str
    model_id: str
    family: str
    symbol: str
    tf: str
    version: str
    artifact_dir: str
    metrics: Mapping[str, Any]
    head_to_head: HeadToHead | None
    seconds: float
    n_bars: int
    pid: int


def run_job(spec: TrainJobSpec) -> TrainJobResult:
    """Train, evaluate and store one version; compare it with the active one."""
    started = time.perf_counter()
    seed_everything(spec.seed)
    pin_torch_threads(spec.family)
    from quantum_daemon.training.offline import OfflineSpec, train_offline

    trained = train_offline(
        OfflineSpec(
            family=spec.family,
            bars=spec.bars,
            data_dir=Path(spec.data_dir),
            evaluation=spec.evaluation,
            params=spec.params,
            seed=spec.seed,
            horizon=spec.horizon,
            n_trials=spec.n_trials,
            now=spec.version_time,
            signals=spec.signals,
            tuning=spec.tuning,
            series=spec.series,
            context=spec.context,
        )
    )
    h2h = None if spec.active is None else head_to_head(spec, Path(trained.artifact_dir))
    return TrainJobResult(
        job_id=spec.job_id,
        model_id=trained.model_id,
        family=spec.family,
        symbol=spec.symbol,
        tf=spec.tf,
        version=trained.version,
        artifact_dir=str(trained.artifact_dir),
        metrics=trained.metrics,
        head_to_head=h2h,
        seconds=time.perf_counter() - started,
        n_bars=sum(len(b) for b in spec.series) if spec.series else len(spec.bars),
        pid=os.getpid(),
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    import numpy as np

    np.random.seed(seed % 2**32)


def pin_torch_threads(family: str) -> None:
    """torch reads OMP_NUM_THREADS at import, but its interop pool and a
    torch imported before the worker set the variable need telling."""
    if family not in TORCH_FAMILIES:
        return
    import torch

    threads = int(os.environ.get("QUANTUM_WORKER_THREADS", "1"))
    torch.set_num_threads(threads)


# -- head to head with the active version -------------------------------------


def head_to_head(spec: TrainJobSpec, new_dir: Path) -> HeadToHead:
    """Both versions on the new version's last test window, on the decisions
    that the active version did not see in training (promotion.py: "beats"),
    sizing the same signal where they size one (``spec.signals``)."""
    from quantum_daemon.models.families import load_model
    from quantum_daemon.storage.artifacts import ArtifactCorrupt

    assert spec.active is not None
    if spec.series:
        from quantum_daemon.training.multi_jobs import head_to_head_multi

        return head_to_head_multi(spec, new_dir)
    try:
        active, active_meta = load_model(Path(spec.active.path), spec.signals, spec.context)
    except ArtifactCorrupt as exc:
        return HeadToHead(spec.active.version, 0, None, None, 0.0, 0.0, refused=str(exc))
    new, new_meta = load_model(new_dir, spec.signals, spec.context)
    idx = common_unseen_decisions(spec, new_meta, active_meta)
    if idx.size == 0:
        return HeadToHead(spec.active.version, 0, None, None, 0.0, 0.0)
    new_score = _score(spec, new, idx)
    try:
        active_score = _score(spec, active, idx)
    except ContextMissing as exc:  # fitted with context the job was not given ([features])
        return HeadToHead(spec.active.version, 0, None, None, 0.0, 0.0, refused=str(exc))
    return HeadToHead(
        active_version=spec.active.version,
        n_decisions=int(idx.size),
        first_ts=int(spec.bars.ts[idx[0]]),
        last_ts=int(spec.bars.ts[idx[-1]]),
        new_sharpe=new_score[0],
        active_sharpe=active_score[0],
        new_total_return=new_score[1],
        active_total_return=active_score[1],
    )


def common_unseen_decisions(
    spec: TrainJobSpec, new_meta: Mapping[str, Any], active_meta: Mapping[str, Any]
) -> Any:
    """Decision indices of the new version's last test window after the
    active version's last validation target (and with a next bar)."""
    import numpy as np

    ts = spec.bars.ts
    window = new_meta["data_window"]["test"]
    active_val_end = int(active_meta["data_window"]["val"]["last_ts"])
    horizon = int(active_meta.get("horizon", spec.evaluation.horizon))
    seen_until = active_val_end + horizon * timeframe_ms(spec.tf)
    start = max(int(window["first_ts"]), seen_until + 1)
    chosen = (ts >= start) & (ts <= int(window["last_ts"]))
    chosen[-1:] = False  # the last bar has no next bar to earn
    return np.flatnonzero(chosen)


def _score(spec: TrainJobSpec, model: Family, idx: Any) -> tuple[float, float]:
    """(annualized Sharpe, total return) after costs of ``model`` on ``idx``."""
    from quantum_daemon.core.evaluation.backtest import cost_rate, next_bar_returns, run_backtest
    from quantum_daemon.core.evaluation.performance import sharpe_ratio, total_return
    from quantum_daemon.core.evaluation.walkforward import EvaluationSettings, positions_of
    from quantum_daemon.domain.timeframes import bars_per_year

    settings = EvaluationSettings.from_config(spec.evaluation)
    forecast = model.predict(spec.bars.slice(0, int(idx[-1]) + 1), idx)
    positions = positions_of(forecast, settings.position_threshold)
    asset = next_bar_returns(spec.bars.close, idx)
    result = run_backtest(positions, asset, cost_rate(settings.fee_bps, settings.slippage_bps))
    return sharpe_ratio(result.net, bars_per_year(spec.tf)), total_return(result.net)
