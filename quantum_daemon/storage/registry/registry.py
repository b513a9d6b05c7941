"""The model registry: versions, their stages and history, and the events
that record them (DESIGN §4, §5).

Storage, under ``data_dir/models/{model_id}/``:

- ``{version}/``: the version folder that ``artifacts.write_version`` wrote
  atomically (artifacts + ``metadata.json`` with their sha256);
- ``state.json``: the model's source of truth: the stage and full stage
  history of every version, the active version, the gate verdicts, the
  durable event outbox, and the ids of the control commands applied.

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

Stages: ``trained -> candidate | rejected``; ``candidate -> active |
retired | rejected``; ``active -> retired``; ``retired -> active``
(rollback, operator promotion). At most one version per model is active;
promoting one retires the one it replaces in the same write. The shadow
transitions (``promote_candidate``, ``retire_candidate``,
``retire_superseded``) act only on versions that are still candidates, so a
replayed decision changes nothing and emits nothing.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantum_daemon.core.promotion import HeadToHead, Verdict
from quantum_daemon.domain.events import (
    MODEL_EVALUATED,
    MODEL_LOAD_REFUSED,
    MODEL_PROMOTED,
    MODEL_REGISTERED,
    MODEL_REJECTED,
    MODEL_RETIRED,
    Event,
    make_event,
)
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.files import (
    STAGES,
    STATE_FILE,
    RegistryError,
    StateFiles,
    is_model_id,
    new_entry,
    previous_active,
)

__all__ = ["STAGES", "STATE_FILE", "Registry", "RegistryError", "VersionInfo"]

log = get_logger()

ALLOWED: dict[str, frozenset[str]] = {
    "trained": frozenset({"candidate", "rejected"}),
    "candidate": frozenset({"active", "retired", "rejected"}),
    "active": frozenset({"retired"}),
    "retired": frozenset({"active"}),
    "rejected": frozenset(),
}
KEEP_COMMAND_IDS = 200
SUPERSEDED = "superseded"  # the retirement reason of a candidate that newer ones pushed out
STALE_TMP_S = 600.0  # a worker's temporary version folder lives seconds; older ones are debris


@dataclass(frozen=True)
class VersionInfo:
    """One version, as ``models list --json`` prints it."""

    model_id: str
    family: str
    symbol: str
    tf: str
    version: str
    stage: str
    created_at: str
    metrics: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "family": self.family,
            "symbol": self.symbol,
            "tf": self.tf,
            "version": self.version,
            "stage": self.stage,
            "created_at": self.created_at,
            "metrics": dict(self.metrics),
        }


def utc_now() -> datetime:
    return datetime.now(UTC)


class Registry:
    """Stages, history and outbox of every model under ``data_dir/models``."""

    def __init__(self, data_dir: Path, clock: Callable[[], datetime] = utc_now) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / artifacts.MODELS_DIR
        self.clock = clock
        self.files = StateFiles(self.data_dir)

    # -- queries -------------------------------------------------------------
    def model_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_model_id(p.name))

    def versions(self, model_id: str | None = None) -> list[VersionInfo]:
        ids = self.model_ids() if model_id is None else [model_id]
        return [info for mid in ids for info in self._infos(self.files.read(mid))]

    def active_version(self, model_id: str) -> str | None:
        active = self.files.read(model_id).get("active")
        return None if active is None else str(active)

    def stage(self, model_id: str, version: str) -> str:
        return str(self._version(self.files.read(model_id), version)["stage"])

    def version_path(self, model_id: str, version: str) -> Path:
        return artifacts.model_dir(self.data_dir, model_id) / version

    def show(self, model_id: str) -> dict[str, Any]:
        state = self.files.read(model_id)
        if not state["versions"]:
            raise RegistryError(f"unknown model {model_id!r} (no versions under {self.root})")
        return {
            "model_id": model_id,
            "family": state["family"],
            "symbol": state["symbol"],
            "tf": state["tf"],
            "active": state["active"],
            "pending_events": len(state["outbox"]),
            "versions": [
                {"version": v, **entry, "path": str(self.version_path(model_id, v))}
                for v, entry in sorted(state["versions"].items())
            ],
        }

    def newest(self, model_id: str) -> tuple[float, int] | None:
        """(creation time in epoch s, open time of its last bar in ms) of the
        newest version: when the model last trained, on which data."""
        state = self.files.read(model_id)
        if not state["versions"]:
            return None
        entry = state["versions"][max(state["versions"])]
        created = datetime.fromisoformat(entry["created_at"]).timestamp()
        return created, int(entry.get("data_last_ts") or 0)

    def previous_active(self, model_id: str) -> str | None:
        """The version that ``rollback`` would bring back."""
        return previous_active(self.files.read(model_id))

    def verify(self, model_id: str, version: str) -> None:
        """Check every artifact's sha256; raises ``artifacts.ArtifactCorrupt``."""
        artifacts.load_version(self.version_path(model_id, version))

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
        with self.files.edit(model_id, meta) as state:
            if version in state["versions"]:
                return []
            entry = state["versions"][version] = new_entry(meta, head_to_head)
            if entry["stage"] == "active":  # restored from the metadata mirror
                state["active"] = version
            window = meta.get("data_window", {})
            return self._emit(
                state,
                MODEL_REGISTERED,
                version,
                "registered",
                artifact_dir=str(self.version_path(model_id, version)),
                data_window=window,
                job_id=job_id,
            )

    def apply_verdict(self, model_id: str, version: str, verdict: Verdict) -> list[Event]:
        """trained -> candidate or rejected, and on to active when the
        verdict promotes (retiring the version it replaces): one write."""
        with self.files.edit(model_id) as state:
            entry = self._version(state, version)
            if entry["stage"] != "trained":
                return []
            entry["verdict"] = verdict.to_dict()
            self._move(state, version, verdict.stage, verdict.reason)
            events = self._emit(
                state,
                MODEL_EVALUATED,
                version,
                _step(entry),
                metrics=entry["metrics"],
                verdict=verdict.to_dict(),
            )
            if verdict.stage == "rejected":
                events += self._emit(
                    state,
                    MODEL_REJECTED,
                    version,
                    _step(entry),
                    gate=verdict.failed_gate,
                    reason=verdict.reason,
                    gates=[g.to_dict() for g in verdict.gates],
                    metrics=entry["metrics"],
                )
            elif verdict.promote:
                events += self._activate(state, version, verdict.reason)
            return events

    def promote(
        self, model_id: str, version: str, reason: str, command_id: str | None = None
    ) -> list[Event]:
        """Operator promotion of a candidate or retired version to active."""
        with self.files.edit(model_id) as state:
            if self._seen(state, command_id):
                return []
            entry = self._version(state, version)
            if entry["stage"] == "active":
                return []
            if entry["stage"] not in ("candidate", "retired"):
                raise RegistryError(
                    f"{model_id} {version} is {entry['stage']}: only a candidate or a "
                    "retired version can be promoted"
                )
            return self._activate(state, version, reason)

    def retire(
        self, model_id: str, version: str, reason: str, command_id: str | None = None
    ) -> list[Event]:
        """Retire an active or candidate version (the model may be left
        without an active version)."""
        with self.files.edit(model_id) as state:
            if self._seen(state, command_id):
                return []
            entry = self._version(state, version)
            if entry["stage"] == "retired":
                return []
            if entry["stage"] not in ("active", "candidate"):
                raise RegistryError(f"{model_id} {version} is {entry['stage']}: cannot retire it")
            return self._retire(state, version, reason, replaced_by=None)

    def promote_candidate(
        self, model_id: str, version: str, replacing: str, reason: str
    ) -> list[Event]:
        """A candidate's shadow win: activate it (retiring ``replacing``) only
        while it is still a candidate and ``replacing`` still the active
        version; a stale or replayed comparison changes nothing."""
        with self.files.edit(model_id) as state:
            if not self._candidate_against(state, version, replacing):
                return []
            return self._activate(state, version, reason)

    def retire_candidate(
        self, model_id: str, version: str, judged_against: str, reason: str, detail: str
    ) -> list[Event]:
        """A candidate's shadow record ran out against ``judged_against``:
        retire it only while it is still a candidate and ``judged_against``
        still the active version (an operator may have replaced it: the
        candidate then faces the new one); otherwise nothing, so a stale or
        replayed decision changes nothing."""
        with self.files.edit(model_id) as state:
            if not self._candidate_against(state, version, judged_against):
                return []
            return self._retire(state, version, reason, replaced_by=None, detail=detail)

    def _candidate_against(self, state: dict[str, Any], version: str, active: str) -> bool:
        """Whether ``version`` is still a candidate and ``active`` still the
        version its shadow record was compared with."""
        entry = self._version(state, version)
        return bool(entry["stage"] == "candidate" and state["active"] == active)

    def retire_superseded(self, model_id: str, keep: int) -> list[Event]:
        """Retire the model's candidates older than its ``keep`` newest
        (reason ``superseded``): one write."""
        with self.files.edit(model_id) as state:
            candidates = _candidates(state)
            detail = f"{keep} newer candidates are in shadow"
            events: list[Event] = []
            for version in candidates[: max(0, len(candidates) - keep)]:
                events += self._retire(state, version, SUPERSEDED, replaced_by=None, detail=detail)
            return events

    def rollback(self, model_id: str, reason: str, command_id: str | None = None) -> list[Event]:
        """Retire the active version and bring back the one active before it."""
        with self.files.edit(model_id) as state:
            if self._seen(state, command_id):
                return []
            previous = previous_active(state)
            if previous is None:
                raise RegistryError(f"{model_id}: no earlier active version to roll back to")
            return self._activate(state, previous, f"rollback: {reason}")

    def refuse(self, model_id: str, version: str, reason: str) -> list[Event]:
        """An artifact failed its integrity check: report it, and retire the
        version if it was active (it must never be loaded)."""
        with self.files.edit(model_id) as state:
            entry = self._version(state, version)
            at = self.clock()
            events = self._emit(
                state,
                MODEL_LOAD_REFUSED,
                version,
                f"refused@{at.isoformat()}",
                reason=reason,
                stage=entry["stage"],
            )
            if entry["stage"] in ("active", "candidate"):
                events += self._retire(state, version, f"artifact refused: {reason}", None)
            return events

    def add_events(self, model_id: str, events: Sequence[Event]) -> None:
        """Put events that are not transitions (``training.*``) in the outbox."""
        with self.files.edit(model_id) as state:
            state["outbox"].extend(e.to_dict() for e in events)

    # -- the outbox ----------------------------------------------------------
    def pending_events(self) -> list[Event]:
        return [
            Event.from_dict(e) for mid in self.model_ids() for e in self.files.read(mid)["outbox"]
        ]

    def confirm_events(self, model_id: str, event_ids: Sequence[str]) -> None:
        gone = set(event_ids)
        with self.files.edit(model_id) as state:
            state["outbox"] = [e for e in state["outbox"] if e["data"]["event_id"] not in gone]

    # -- start-up ------------------------------------------------------------
    def recover(self) -> list[tuple[str, str]]:
        """Crash recovery; returns the (model_id, version) still ``trained``
        (they await their verdict)."""
        waiting: list[tuple[str, str]] = []
        for model_id in self.model_ids():
            self._remove_stale_tmp(model_id)
            for version in artifacts.list_versions(self.data_dir, model_id):
                self._adopt(model_id, version)
            state = self.files.read(model_id)
            self.files.mirror(model_id, state, only_changed_from=None)
            waiting += [
                (model_id, v) for v, e in state["versions"].items() if e["stage"] == "trained"
            ]
        return sorted(waiting)

    def _adopt(self, model_id: str, version: str) -> None:
        if version in self.files.read(model_id)["versions"]:
            return
        try:
            self.register(model_id, version, job_id="recovered")
        except artifacts.ArtifactCorrupt as exc:
            log.warning(
                "registry.unreadable_version", model_id=model_id, version=version, error=str(exc)
            )
            return
        log.info("registry.adopted", model_id=model_id, version=version)

    def _remove_stale_tmp(self, model_id: str) -> None:
        folder = artifacts.model_dir(self.data_dir, model_id)
        for tmp in folder.glob(".tmp-*"):
            if tmp.is_dir() and time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
                log.info("registry.removed_stale_tmp", path=str(tmp))

    # -- internals -----------------------------------------------------------
    def _emit(
        self, state: dict[str, Any], type: str, version: str, transition: str, **fields: Any
    ) -> list[Event]:
        event = make_event(
            type,
            model_id=state["model_id"],
            family=state["family"],
            symbol=state["symbol"],
            tf=state["tf"],
            version=version,
            at=self.clock(),
            transition=transition,
            **fields,
        )
        state["outbox"].append(event.to_dict())
        return [event]

    def _move(self, state: dict[str, Any], version: str, stage: str, reason: str) -> None:
        entry = self._version(state, version)
        if stage not in ALLOWED[entry["stage"]]:
            raise RegistryError(
                f"{state['model_id']} {version}: {entry['stage']} -> {stage} is not allowed"
            )
        entry["stage"] = stage
        entry["history"].append(artifacts.stage_entry(stage, self.clock(), reason))
        if stage == "active":
            state["active"] = version
        elif state["active"] == version:
            state["active"] = None

    def _activate(self, state: dict[str, Any], version: str, reason: str) -> list[Event]:
        previous = state["active"]
        events: list[Event] = []
        if previous is not None and previous != version:
            events += self._retire(state, previous, f"replaced by {version}", replaced_by=version)
        self._move(state, version, "active", reason)
        entry = state["versions"][version]
        return events + self._emit(
            state,
            MODEL_PROMOTED,
            version,
            _step(entry),
            **{"from": previous, "to": version},
            reason=reason,
            metrics=entry["metrics"],
        )

    def _retire(
        self,
        state: dict[str, Any],
        version: str,
        reason: str,
        replaced_by: str | None,
        detail: str | None = None,
    ) -> list[Event]:
        self._move(state, version, "retired", reason if detail is None else f"{reason}: {detail}")
        entry = state["versions"][version]
        extra = {} if detail is None else {"detail": detail}
        return self._emit(
            state,
            MODEL_RETIRED,
            version,
            _step(entry),
            reason=reason,
            replaced_by=replaced_by,
            **extra,
        )

    def _seen(self, state: dict[str, Any], command_id: str | None) -> bool:
        """Whether the control command was applied before (a redelivery);
        records it otherwise."""
        if command_id is None:
            return False
        if command_id in state["commands"]:
            return True
        state["commands"] = [*state["commands"], command_id][-KEEP_COMMAND_IDS:]
        return False

    def _version(self, state: dict[str, Any], version: str) -> dict[str, Any]:
        entry = state["versions"].get(version)
        if entry is None:
            raise RegistryError(f"unknown version {version!r} of {state['model_id']}")
        return entry

    def _infos(self, state: dict[str, Any]) -> list[VersionInfo]:
        return [
            VersionInfo(
                state["model_id"],
                state["family"],
                state["symbol"],
                state["tf"],
                version,
                entry["stage"],
                entry["created_at"],
                entry["metrics"],
            )
            for version, entry in sorted(state["versions"].items())
        ]


def _candidates(state: Mapping[str, Any]) -> list[str]:
    """The model's candidate versions, oldest first (version names sort by time)."""
    return sorted(v for v, e in state["versions"].items() if e["stage"] == "candidate")


def _step(entry: Mapping[str, Any]) -> str:
    """The transition's place in the version's history: a stable event id part."""
    return f"h{len(entry['history'])}"
