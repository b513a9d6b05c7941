"""A model's registry state as typed values: what ``state.json`` holds.

``ModelState`` is the model's identity, its active version, one
``VersionRecord`` per version (stage, stage history, metrics, the trainer's
head-to-head, the gate verdict), the durable event outbox, and the ids of the
control commands applied. JSON exists only at the file boundary:
``from_json`` takes what ``json.loads`` gave and checks its shape (a foreign
one raises ``ValueError``, ``KeyError`` or ``TypeError``, which
``files.StateFiles`` reports as ``StateCorrupt``); ``to_json`` gives back the
keys and values that the file has always held, so existing data dirs load
and rewriting an unchanged state leaves the same JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from quantum_daemon.core.promotion import HeadToHead, Verdict
from quantum_daemon.domain.events import Event
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.stages import Stage
from quantum_daemon.storage.registry.errors import RegistryError

JsonObject = dict[str, Any]
T = TypeVar("T")
Mirrored = dict[str, tuple[Stage, tuple["HistoryEntry", ...]]]  # version -> (stage, history)
KEEP_COMMAND_IDS = 200  # applied control command ids remembered against redelivery
TRIAL_KINDS = ("trained", "tuning", "simulated")  # the ledger's kinds of trial
# finished versions (rejected, or retired without ever being active) kept in
# state.json; older ones go to the model's archive (``files.ARCHIVE_FILE``)
KEEP_FINISHED = 50
# retired versions that were once active (rollback targets) kept beyond
# ``previous_active``; older ones count as finished
KEEP_ROLLBACK_TARGETS = 10


@dataclass(frozen=True)
class HistoryEntry:
    """One step of a version's stage history (also mirrored into its metadata)."""

    stage: Stage
    at: str | None  # ISO 8601 UTC; None only when the metadata had no creation time
    reason: str

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> HistoryEntry:
        return cls(Stage(raw["stage"]), _text_or_none(raw, "at"), _text(raw, "reason"))

    def to_json(self) -> JsonObject:
        return {"stage": self.stage.value, "at": self.at, "reason": self.reason}


@dataclass
class VersionRecord:
    """One version of the model: its stage and how it got there."""

    stage: Stage
    created_at: str | None
    metrics: JsonObject  # the evaluator's numbers, as the trainer reported them
    data_last_ts: int | None  # open time (ms) of the last bar it was trained on
    head_to_head: HeadToHead | None  # against the version active when it trained
    verdict: Verdict | None  # the gates' verdict, once evaluated
    history: list[HistoryEntry]
    # the hyper-parameters it was trained with and, when tuned, the search's
    # record (``tuned_params``, ``trials``, ``tuning_seconds``): from its metadata
    params: JsonObject = field(default_factory=dict)
    tuning: JsonObject = field(default_factory=dict)

    @classmethod
    def registered(cls, meta: Mapping[str, Any], head_to_head: HeadToHead | None) -> VersionRecord:
        """The record of a version folder. Its stage is the last one of the
        metadata's history: ``trained`` for a new version, the mirrored
        stage when ``state.json`` was lost and is being rebuilt."""
        created_at = meta.get("created_at")
        history = _history_of(meta) or [HistoryEntry(Stage.TRAINED, created_at, "registered")]
        last_ts = meta.get("data_window", {}).get("bars", {}).get("last_ts")
        return cls(
            stage=history[-1].stage,
            created_at=created_at,
            metrics=dict(meta.get("metrics", {})),
            data_last_ts=None if last_ts is None else int(last_ts),
            head_to_head=head_to_head,
            verdict=None,
            history=history,
            params=dict(meta.get("params") or {}),
            tuning=_tuning_of(meta),
        )

    @property
    def step(self) -> str:
        """How far the history has come (its length): the part of a
        transition's event id that tells one step from another."""
        return f"h{len(self.history)}"

    def was_active(self) -> bool:
        return any(h.stage is Stage.ACTIVE for h in self.history)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> VersionRecord:
        verdict = raw.get("verdict")
        return cls(
            stage=Stage(raw["stage"]),
            created_at=_text_or_none(raw, "created_at"),
            metrics=_object(raw, "metrics"),
            data_last_ts=_int_or_none(raw, "data_last_ts"),
            head_to_head=HeadToHead.from_dict(raw.get("head_to_head")),
            verdict=None if verdict is None else Verdict.from_dict(verdict),
            history=[HistoryEntry.from_json(h) for h in _list(raw, "history")],
            params=_object(raw, "params") if "params" in raw else {},
            tuning=_object(raw, "tuning") if "tuning" in raw else {},
        )

    def to_json(self) -> JsonObject:
        return {
            "stage": self.stage.value,
            "created_at": self.created_at,
            "metrics": self.metrics,
            "data_last_ts": self.data_last_ts,
            "head_to_head": None if self.head_to_head is None else self.head_to_head.to_dict(),
            "verdict": None if self.verdict is None else self.verdict.to_dict(),
            "history": [h.to_json() for h in self.history],
            # only when known: a state written before them reads back as it was
            **({"params": self.params} if self.params else {}),
            **({"tuning": self.tuning} if self.tuning else {}),
        }


@dataclass
class ModelState:
    """Everything the registry knows of one model (its ``state.json``)."""

    model_id: str
    family: str
    symbol: str
    tf: str
    active: str | None = None
    versions: dict[str, VersionRecord] = field(default_factory=dict)
    outbox: list[Event] = field(default_factory=list)  # written, not yet published
    commands: list[str] = field(default_factory=list)  # the last applied command ids
    # the trial ledger: versions trained, extra hyper-parameter sets tried,
    # versions trained by ``simulate --seed-live``; all deflate the record's Sharpe
    trials: dict[str, int] = field(default_factory=dict)
    archived: int = 0  # finished versions moved to the archive

    def finished(self) -> list[str]:
        """Versions no transition can start from but an operator's promotion
        of a retired one: rejected, or retired without ever being active, or
        rollback targets (retired versions once active) older than the
        newest ``KEEP_ROLLBACK_TARGETS`` and than ``previous_active``: every
        promotion leaves one, and state.json must stay bounded."""
        done = [
            v
            for v, r in self.versions.items()
            if r.stage is Stage.REJECTED or (r.stage is Stage.RETIRED and not r.was_active())
        ]
        targets = sorted(
            v
            for v, r in self.versions.items()
            if r.stage is Stage.RETIRED and r.was_active() and v != self.active
        )
        keep = {*targets[len(targets) - KEEP_ROLLBACK_TARGETS :], self.previous_active()}
        return sorted(done + [v for v in targets if v not in keep])

    def count_trials(self, kind: str, n: int) -> None:
        if kind not in TRIAL_KINDS:
            raise RegistryError(f"unknown kind of trial {kind!r} (one of {TRIAL_KINDS})")
        if n < 0:
            raise RegistryError(f"a trial count is >= 0, got {n}")
        if n:
            self.trials = {**self.trials, kind: self.trials.get(kind, 0) + n}

    @property
    def n_trials(self) -> int:
        return sum(self.trials.values())

    @classmethod
    def empty(cls, model_id: str, meta: Mapping[str, Any] | None = None) -> ModelState:
        """A model without versions; its identity from its id unless the
        first version's metadata says otherwise."""
        key = ModelKey.parse(model_id)
        meta = meta or {}
        return cls(
            model_id=model_id,
            family=meta.get("family", key.family),
            symbol=meta.get("symbol", key.symbol),
            tf=meta.get("tf", key.tf),
        )

    def version(self, version: str) -> VersionRecord:
        record = self.versions.get(version)
        if record is None:
            raise RegistryError(f"unknown version {version!r} of {self.model_id}")
        return record

    def versions_at(self, stage: Stage) -> list[str]:
        """The versions at ``stage``, oldest first (version names sort by time)."""
        return sorted(v for v, record in self.versions.items() if record.stage is stage)

    def previous_active(self) -> str | None:
        """The retired version whose last active period ended most recently:
        the one that ``rollback`` brings back."""
        best: tuple[str, str] | None = None
        for version, record in self.versions.items():
            if record.stage is not Stage.RETIRED or version == self.active:
                continue
            if record.was_active():
                ended = record.history[-1].at or ""
                if best is None or ended > best[0]:
                    best = (ended, version)
        return None if best is None else best[1]

    def mirrored(self) -> Mirrored:
        """Each version's stage and history: what its metadata.json mirrors."""
        return {v: (record.stage, tuple(record.history)) for v, record in self.versions.items()}

    def applied_before(self, command_id: str | None) -> bool:
        """Whether the control command was applied before (a redelivery);
        records it otherwise."""
        if command_id is None:
            return False
        if command_id in self.commands:
            return True
        self.commands = [*self.commands, command_id][-KEEP_COMMAND_IDS:]
        return False

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelState:
        return cls(
            model_id=_text(raw, "model_id"),
            family=_text(raw, "family"),
            symbol=_text(raw, "symbol"),
            tf=_text(raw, "tf"),
            active=_text_or_none(raw, "active"),
            versions={
                _checked(v, str): VersionRecord.from_json(_checked(record, dict))
                for v, record in _object(raw, "versions").items()
            },
            outbox=[Event.from_dict(_checked(e, dict)) for e in _list(raw, "outbox")],
            commands=[_checked(c, str) for c in _list(raw, "commands")],
            trials={
                _checked(k, str): _checked(n, int) for k, n in raw.get("trials", {}).items()
            },
            archived=_checked(raw.get("archived", 0), int),
        )

    def to_json(self) -> JsonObject:
        out: JsonObject = {
            "model_id": self.model_id,
            "family": self.family,
            "symbol": self.symbol,
            "tf": self.tf,
            "active": self.active,
            "versions": {v: record.to_json() for v, record in self.versions.items()},
            "outbox": [e.to_dict() for e in self.outbox],
            "commands": list(self.commands),
        }
        if self.trials:  # a state written before the ledger reads back as it was
            out["trials"] = dict(self.trials)
        if self.archived:
            out["archived"] = self.archived
        return out


def _history_of(meta: Mapping[str, Any]) -> list[HistoryEntry]:
    """The metadata's mirrored stage history; empty when it has none or
    one that does not read as a history."""
    try:
        return [HistoryEntry.from_json(h) for h in meta.get("stage_history") or []]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def _checked(value: Any, kind: type[T]) -> T:
    if not isinstance(value, kind):
        raise TypeError(f"expected {kind.__name__}, found {value!r}")
    return value


def _text(raw: Mapping[str, Any], key: str) -> str:
    return _checked(raw[key], str)


def _text_or_none(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return None if value is None else _checked(value, str)


def _int_or_none(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    return None if value is None else _checked(value, int)


def _object(raw: Mapping[str, Any], key: str) -> JsonObject:
    return _checked(raw[key], dict)


def _list(raw: Mapping[str, Any], key: str) -> list[Any]:
    return _checked(raw.get(key, []), list)


def _tuning_of(meta: Mapping[str, Any]) -> JsonObject:
    """A tuned version's search record from its metadata; {} when it was not tuned."""
    if "tuned_params" not in meta:
        return {}
    return {
        "tuned_params": meta["tuned_params"],
        "trials": meta.get("trials"),
        "tuning_seconds": meta.get("tuning_seconds"),
        **dict(meta.get("tuning") or {}),
    }
