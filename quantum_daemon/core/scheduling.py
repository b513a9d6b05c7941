"""When does each model train? Pure decision logic, no I/O and no clock.

A model is one (family, symbol, timeframe) of ``[models]``; its id is
``{family}_{SYMBOL}_{TF}``. It is asked to train by a *trigger*:

- ``startup``: at start-up it has no active version;
- ``bars``: ``retrain_every_bars`` new bars of its series were stored since
  its last training started;
- ``interval``: ``retrain_interval_s`` passed since its last training started
  (0 disables);
- ``operator``: a command (``train --now``, the control stream);
- ``retry``: its last job failed while it has no active version (after
  ``failure_retry_s``, so that a failing job is not a tight loop);
- ``drift``: a live version's loss drifted up (``core.drift``; at most once
  per ``[promotion] drift_cooldown_bars``).

A multi-symbol model (``{family}_multi_{TF}``, ``symbols`` given per model
id) reads the series of each of its symbols: its ``bars`` trigger counts the
new bars of its busiest series (three symbols closing one bar each is one
bar, not three, so the model retrains on the same cadence as a
single-symbol one and no storm of jobs follows a round of bars), and it is
ready once every one of its series holds ``min_bars`` bars.

One job per model at a time: a trigger for a model that is already pending
merges into that request (reasons are united, the earliest request time
kept); a trigger while the model runs becomes the model's next request. A
request is ready once the series holds ``min_bars`` bars and its
``not_before`` time has come. Ready requests leave in this order: models
without an active version first, then operator requests, then the oldest
request, then by model id.

``Scheduler`` has no I/O and no clock: callers pass ``now`` (epoch seconds)
and bar counts in. ``lifecycle.scheduler.SchedulerLoop`` feeds it from the
daemon and starts the jobs it hands out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from quantum_daemon.domain.ids import ModelKey, UnknownModel


class Trigger(StrEnum):
    STARTUP = "startup"
    BARS = "bars"
    INTERVAL = "interval"
    OPERATOR = "operator"
    RETRY = "retry"
    DRIFT = "drift"


@dataclass(frozen=True)
class SchedulerPolicy:
    retrain_every_bars: int = 168
    retrain_interval_s: float = 0.0  # 0: no time-based retraining
    min_bars: int = 1  # a series shorter than this cannot be trained on yet
    failure_retry_s: float = 300.0  # retry delay for a failed model that has no active version


@dataclass(frozen=True)
class ModelStart:
    """What the registry and the store know about a model at start-up."""

    has_active: bool = False
    last_trained_at: float | None = None  # creation time of its newest version
    bars_since_train: int = 0  # stored bars newer than its newest version's data


@dataclass(frozen=True)
class TrainRequest:
    """A model that should train, and why."""

    key: ModelKey
    reasons: frozenset[Trigger]
    requested_at: float
    has_active: bool
    not_before: float = 0.0

    @property
    def model_id(self) -> str:
        return self.key.model_id

    def priority(self) -> tuple[bool, bool, float, str]:
        return (
            self.has_active,
            Trigger.OPERATOR not in self.reasons,
            self.requested_at,
            self.model_id,
        )

    def merged(self, other: TrainRequest) -> TrainRequest:
        return replace(
            self,
            reasons=self.reasons | other.reasons,
            requested_at=min(self.requested_at, other.requested_at),
            not_before=min(self.not_before, other.not_before),
        )


@dataclass
class _Model:
    key: ModelKey
    has_active: bool = False
    bars_since_train: int = 0
    last_started_at: float | None = None
    running: bool = False
    pending: TrainRequest | None = None
    series: tuple[tuple[str, str], ...] = ()  # (symbol, tf) of every series it reads
    new_bars: dict[tuple[str, str], int] = field(default_factory=dict)  # per series, since train


class Scheduler:
    """The pure state machine; see the module docstring."""

    def __init__(
        self,
        keys: Iterable[ModelKey],
        policy: SchedulerPolicy,
        symbols: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        """``symbols``: the symbols of each multi-symbol model, by model id."""
        self.policy = policy
        symbols = symbols or {}
        self._models = {
            k.model_id: _Model(k, series=_series(k, symbols.get(k.model_id, ()))) for k in keys
        }
        self._available: dict[tuple[str, str], int] = {}

    # -- inputs ------------------------------------------------------------
    def start(self, now: float, known: Mapping[str, ModelStart]) -> None:
        """Recover each model's state; a model without an active version is
        asked to train (``startup``)."""
        for mid, model in self._models.items():
            facts = known.get(mid, ModelStart())
            model.has_active = facts.has_active
            model.last_started_at = facts.last_trained_at
            model.bars_since_train = facts.bars_since_train
            if not facts.has_active:
                self._request(model, Trigger.STARTUP, now)
            elif facts.bars_since_train >= self.policy.retrain_every_bars:
                self._request(model, Trigger.BARS, now)

    def set_available(self, symbol: str, tf: str, n_bars: int) -> None:
        """The number of bars the store holds for a series (at start-up)."""
        self._available[(symbol, tf)] = n_bars

    def bars_stored(self, symbol: str, tf: str, count: int, now: float) -> None:
        """``count`` new bars of a series were stored."""
        series = (symbol, tf)
        self._available[series] = self._available.get(series, 0) + count
        for model in self._models.values():
            if series not in model.series:
                continue
            model.new_bars[series] = model.new_bars.get(series, 0) + count
            # the busiest series: a round of bars over a multi model's symbols counts once
            model.bars_since_train = max(model.bars_since_train, model.new_bars[series])
            if model.bars_since_train >= self.policy.retrain_every_bars:
                self._request(model, Trigger.BARS, now)

    def tick(self, now: float) -> None:
        """Time-based triggers."""
        interval = self.policy.retrain_interval_s
        if interval <= 0:
            return
        for model in self._models.values():
            last = model.last_started_at
            if last is not None and now - last >= interval and not model.running:
                self._request(model, Trigger.INTERVAL, now)

    def request(self, model_id: str, now: float, trigger: Trigger = Trigger.OPERATOR) -> None:
        """Ask for a training of ``model_id``; raises ``UnknownModel``."""
        model = self._models.get(model_id)
        if model is None:
            raise UnknownModel(model_id)
        self._request(model, trigger, now)

    def set_active(self, model_id: str, has_active: bool) -> None:
        """The model gained or lost its active version (promotion, retirement)."""
        model = self._models.get(model_id)
        if model is None:
            return
        model.has_active = has_active
        if model.pending is not None:
            model.pending = replace(model.pending, has_active=has_active)

    def job_finished(self, model_id: str, now: float, ok: bool, has_active: bool) -> None:
        """The model's job ended; a failure of a model without an active
        version is retried after ``failure_retry_s``."""
        model = self._models[model_id]
        model.running = False
        self.set_active(model_id, has_active)
        if not ok and not has_active:
            self._request(model, Trigger.RETRY, now, not_before=now + self.policy.failure_retry_s)

    # -- outputs -----------------------------------------------------------
    def next_job(self, now: float, can_run: Callable[[ModelKey], bool]) -> TrainRequest | None:
        """The first ready request that ``can_run`` accepts (``can_run`` may
        claim a worker: it is asked only for the request it would start); the
        model is then running and its bar count restarts from zero."""
        for request in self.pending():
            if not self.is_ready(request, now) or not can_run(request.key):
                continue
            model = self._models[request.model_id]
            model.pending = None
            model.running = True
            model.bars_since_train = 0
            model.new_bars.clear()
            model.last_started_at = now
            return request
        return None

    def pending(self) -> list[TrainRequest]:
        """Requests waiting to start, in priority order."""
        waiting = [m.pending for m in self._models.values() if m.pending and not m.running]
        return sorted(waiting, key=TrainRequest.priority)

    def is_ready(self, request: TrainRequest, now: float) -> bool:
        series = self._models[request.model_id].series
        enough = all(self._available.get(s, 0) >= self.policy.min_bars for s in series)
        return enough and now >= request.not_before

    def running(self) -> list[str]:
        return sorted(mid for mid, m in self._models.items() if m.running)

    def queued(self) -> list[str]:
        """Models with a request, running or not (a running model's request
        waits for the job to end)."""
        return sorted(mid for mid, m in self._models.items() if m.pending)

    def keys(self) -> list[ModelKey]:
        return [m.key for m in self._models.values()]

    def knows(self, model_id: str) -> bool:
        return model_id in self._models

    def series_of(self, model_id: str) -> tuple[tuple[str, str], ...]:
        """(symbol, tf) of every series the model reads."""
        return self._models[model_id].series

    def available(self, symbol: str, tf: str) -> int:
        return self._available.get((symbol, tf), 0)

    def _request(
        self, model: _Model, trigger: Trigger, now: float, not_before: float = 0.0
    ) -> None:
        new = TrainRequest(model.key, frozenset({trigger}), now, model.has_active, not_before)
        model.pending = new if model.pending is None else model.pending.merged(new)


def _series(key: ModelKey, symbols: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The series a model reads: its own, or each of a multi model's symbols'."""
    return tuple((s, key.tf) for s in symbols) if symbols else ((key.symbol, key.tf),)
