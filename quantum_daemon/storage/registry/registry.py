"""The model registry: versions, their stages and history, and the events
that record them (DESIGN §4, §5).

Storage, under ``data_dir/models/{model_id}/``:

- ``{version}/``: the version folder that ``artifacts.write_version`` wrote
  atomically (artifacts + ``metadata.json`` with their sha256);
- ``state.json``: the model's source of truth (``state.ModelState``): the
  stage and full stage history of every version, the active version, the
  gate verdicts, the durable event outbox, and the ids of the control
  commands applied.

Every transition (register, evaluate, promote, retire, rollback, refuse) is
one atomic rewrite of ``state.json`` (temp file, fsync, rename, fsync of the
folder) under an exclusive ``flock`` of the model (the daemon and the CLI
may both write), and that same write puts the transition's events in the
outbox: after a crash, either both the transition and its events exist or
neither does. The stage history is then mirrored into each changed
version's ``metadata.json`` (``stage``, ``stage_history``); ``recover``
repairs a mirror that a crash left behind, registers version folders that a
worker wrote but the daemon never recorded, and removes stale temporary
folders of killed workers.

Stages (``domain.stages``): ``trained -> candidate | rejected``;
``candidate -> active | retired | rejected``; ``active -> retired``;
``retired -> active`` (rollback, operator promotion). At most one version
per model is active; promoting one retires the one it replaces in the same
write. The shadow transitions (``promote_candidate``, ``retire_candidate``,
``retire_superseded``) act only on versions that are still candidates, so a
replayed decision changes nothing and emits nothing.

The module is split along those lines: ``views`` (the queries, the read
side), ``transitions`` (the moves within one write), ``recovery``, ``state``
(the typed state) and ``files`` (its JSON file, lock and mirror).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantum_daemon.core.promotion import HeadToHead, Verdict
from quantum_daemon.domain.events import (
    MODEL_EVALUATED,
    MODEL_LOAD_REFUSED,
    MODEL_REGISTERED,
    MODEL_REJECTED,
    Event,
)
from quantum_daemon.domain.stages import Stage
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry import recovery
from quantum_daemon.storage.registry.errors import RegistryError, StateCorrupt
from quantum_daemon.storage.registry.files import STATE_FILE, locked, write_text_atomic
from quantum_daemon.storage.registry.state import VersionRecord
from quantum_daemon.storage.registry.transitions import Clock, Transition
from quantum_daemon.storage.registry.views import ZOO_TRIALS_FILE, RegistryViews, VersionInfo

__all__ = ["STATE_FILE", "SUPERSEDED", "Registry", "RegistryError", "StateCorrupt", "VersionInfo"]

SUPERSEDED = "superseded"  # the retirement reason of a candidate that newer ones pushed out


def utc_now() -> datetime:
    return datetime.now(UTC)


class Registry(RegistryViews):
    """Stages, history and outbox of every model under ``data_dir/models``:
    the queries of ``RegistryViews`` and the transitions."""

    def __init__(self, data_dir: Path, clock: Clock = utc_now) -> None:
        super().__init__(data_dir)
        self.clock = clock

    # -- transitions ---------------------------------------------------------
    def register(
        self,
        model_id: str,
        version: str,
        head_to_head: HeadToHead | None = None,
        job_id: str | None = None,
    ) -> list[Event]:
        """Record a version folder that a worker wrote, at stage ``trained``."""
        meta = artifacts.read_metadata(self.version_path(model_id, version))
        with self._transition(model_id, meta) as change:
            state = change.state
            if version in state.versions:
                return []
            record = state.versions[version] = VersionRecord.registered(meta, head_to_head)
            state.count_trials("trained", 1)
            state.count_trials("tuning", max(_int(meta.get("trials"), 1) - 1, 0))
            if record.stage is Stage.ACTIVE:  # restored from the metadata mirror
                state.active = version
            return change.emit(
                MODEL_REGISTERED,
                version,
                "registered",
                artifact_dir=str(self.version_path(model_id, version)),
                data_window=meta.get("data_window", {}),
                job_id=job_id,
            )

    def apply_verdict(self, model_id: str, version: str, verdict: Verdict) -> list[Event]:
        """trained -> candidate or rejected, and on to active when the
        verdict promotes (retiring the version it replaces): one write."""
        with self._transition(model_id) as change:
            record = change.state.version(version)
            if record.stage is not Stage.TRAINED:
                return []
            record.verdict = verdict
            change.move(version, verdict.stage, verdict.reason)
            events = change.emit(
                MODEL_EVALUATED,
                version,
                record.step,
                metrics=record.metrics,
                verdict=verdict.to_dict(),
            )
            if verdict.stage == Stage.REJECTED:
                events += change.emit(
                    MODEL_REJECTED,
                    version,
                    record.step,
                    gate=verdict.failed_gate,
                    reason=verdict.reason,
                    gates=[g.to_dict() for g in verdict.gates],
                    metrics=record.metrics,
                )
            elif verdict.promote:
                events += change.activate(version, verdict.reason)
            return events

    def promote(
        self, model_id: str, version: str, reason: str, command_id: str | None = None
    ) -> list[Event]:
        """Operator promotion of a candidate or retired version to active."""
        with self._transition(model_id) as change:
            if change.state.applied_before(command_id):
                return []
            stage = change.state.version(version).stage
            if stage is Stage.ACTIVE:
                return []
            if stage not in (Stage.CANDIDATE, Stage.RETIRED):
                raise RegistryError(
                    f"{model_id} {version} is {stage}: only a candidate or a "
                    "retired version can be promoted"
                )
            return change.activate(version, reason)

    def retire(
        self, model_id: str, version: str, reason: str, command_id: str | None = None
    ) -> list[Event]:
        """Retire an active or candidate version (the model may be left
        without an active version)."""
        with self._transition(model_id) as change:
            if change.state.applied_before(command_id):
                return []
            stage = change.state.version(version).stage
            if stage is Stage.RETIRED:
                return []
            if stage not in (Stage.ACTIVE, Stage.CANDIDATE):
                raise RegistryError(f"{model_id} {version} is {stage}: cannot retire it")
            return change.retire(version, reason, replaced_by=None)

    def promote_candidate(
        self, model_id: str, version: str, replacing: str, reason: str
    ) -> list[Event]:
        """A candidate's shadow win: activate it (retiring ``replacing``) only
        while it is still a candidate and ``replacing`` still the active
        version; a stale or replayed comparison changes nothing."""
        with self._transition(model_id) as change:
            if not _candidate_against(change, version, replacing):
                return []
            return change.activate(version, reason)

    def promote_first(self, model_id: str, version: str, reason: str) -> list[Event]:
        """A model without an active version: activate its candidate
        ``version`` only while it is a candidate and nothing is active."""
        with self._transition(model_id) as change:
            state = change.state
            if state.version(version).stage is not Stage.CANDIDATE or state.active is not None:
                return []
            return change.activate(version, reason)

    def retire_candidate(
        self, model_id: str, version: str, judged_against: str, reason: str, detail: str
    ) -> list[Event]:
        """A candidate's shadow record ran out against ``judged_against``:
        retire it only while it is still a candidate and ``judged_against``
        still the active version (an operator may have replaced it: the
        candidate then faces the new one); otherwise nothing, so a stale or
        replayed decision changes nothing."""
        with self._transition(model_id) as change:
            if not _candidate_against(change, version, judged_against):
                return []
            return change.retire(version, reason, replaced_by=None, detail=detail)

    def retire_superseded(self, model_id: str, keep: int) -> list[Event]:
        """Retire the model's candidates older than its ``keep`` newest
        (reason ``superseded``): one write, and none (no lock, no parse and
        encode of the whole state) when there are no more candidates than
        that, the common case: it runs on every worker load report."""
        if len(self.files.read(model_id).versions_at(Stage.CANDIDATE)) <= keep:
            return []
        with self._transition(model_id) as change:
            candidates = change.state.versions_at(Stage.CANDIDATE)
            detail = f"{keep} newer candidates are in shadow"
            events: list[Event] = []
            for version in candidates[: max(0, len(candidates) - keep)]:
                events += change.retire(version, SUPERSEDED, replaced_by=None, detail=detail)
            return events

    def rollback(self, model_id: str, reason: str, command_id: str | None = None) -> list[Event]:
        """Retire the active version and bring back the one active before it."""
        with self._transition(model_id) as change:
            if change.state.applied_before(command_id):
                return []
            previous = change.state.previous_active()
            if previous is None:
                raise RegistryError(f"{model_id}: no earlier active version to roll back to")
            return change.activate(previous, f"rollback: {reason}")

    def refuse(self, model_id: str, version: str, reason: str) -> list[Event]:
        """An artifact failed its integrity check: report it, and retire the
        version if it was active (it must never be loaded)."""
        with self._transition(model_id) as change:
            stage = change.state.version(version).stage
            events = change.emit(
                MODEL_LOAD_REFUSED,
                version,
                f"refused@{self.clock().isoformat()}",
                reason=reason,
                stage=stage.value,
            )
            if stage in (Stage.ACTIVE, Stage.CANDIDATE):
                events += change.retire(version, f"artifact refused: {reason}", None)
            return events

    def count_trials(self, model_id: str, kind: str, n: int) -> None:
        """Add ``n`` trials of ``kind`` (``state.TRIAL_KINDS``) to the model's ledger."""
        with self.files.edit(model_id) as state:
            state.count_trials(kind, n)

    def count_zoo_trials(self, kind: str, n: int) -> None:
        """Add ``n`` trials of the whole zoo (simulated variants) to ``models/trials.json``."""
        if n < 0:
            raise RegistryError(f"a trial count is >= 0, got {n}")
        self.root.mkdir(parents=True, exist_ok=True)
        with locked(self.root / ".trials.lock"):
            ledger = self.zoo_ledger()
            ledger[kind] = ledger.get(kind, 0) + n
            write_text_atomic(self.root / ZOO_TRIALS_FILE, json.dumps(ledger, sort_keys=True))

    # -- the outbox ----------------------------------------------------------
    def add_events(self, model_id: str, events: Sequence[Event]) -> None:
        """Put events that are not transitions (``training.*``) in the outbox."""
        with self.files.edit(model_id) as state:
            state.outbox.extend(events)

    def confirm_events(self, model_id: str, event_ids: Sequence[str]) -> None:
        gone = set(event_ids)
        with self.files.edit(model_id) as state:
            state.outbox = [e for e in state.outbox if e.event_id not in gone]

    # -- start-up ------------------------------------------------------------
    def recover(self) -> list[tuple[str, str]]:
        """Crash recovery (``recovery.recover``); returns the (model_id,
        version) still ``trained`` (they await their verdict)."""
        return recovery.recover(self)

    @contextlib.contextmanager
    def _transition(
        self, model_id: str, meta: Mapping[str, Any] | None = None
    ) -> Iterator[Transition]:
        with self.files.edit(model_id, meta) as state:
            yield Transition(state, self.clock)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _candidate_against(change: Transition, version: str, active: str) -> bool:
    """Whether ``version`` is still a candidate and ``active`` still the
    version its shadow record was compared with."""
    record = change.state.version(version)
    return record.stage is Stage.CANDIDATE and change.state.active == active
