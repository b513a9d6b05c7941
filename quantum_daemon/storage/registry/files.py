"""The registry's files: each model's ``state.json``, its lock, atomic writes,
and the stage mirror in each version's ``metadata.json`` (see ``registry``).

``StateFiles.edit`` is the one way to change a model's state: a
read-modify-write under an exclusive ``flock`` of the model (the daemon and
the CLI may both write), one atomic replace of ``state.json`` (temp file,
fsync, rename, fsync of the folder) if anything changed, then the mirror.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from quantum_daemon.core.promotion import HeadToHead
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.storage import artifacts

STAGES = ("trained", "candidate", "active", "rejected", "retired")
STATE_FILE = "state.json"
LOCK_FILE = ".lock"


class RegistryError(Exception):
    """An operator request the registry refuses (unknown model or version,
    a transition that the stages do not allow); the message says why."""


class StateFiles:
    """Reads and atomically rewrites the per-model state files under ``data_dir/models``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    @contextlib.contextmanager
    def edit(
        self, model_id: str, meta: Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Read-modify-write of the model's state under its lock: one atomic
        write if anything changed, then the metadata mirror."""
        folder = artifacts.model_dir(self.data_dir, model_id)
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / LOCK_FILE):
            state = self.read(model_id, meta)
            before = copy.deepcopy(state)
            yield state
            if state != before:
                write_json_atomic(folder / STATE_FILE, state)
                self.mirror(model_id, state, only_changed_from=before)

    def read(self, model_id: str, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        check_model_id(model_id)
        path = artifacts.model_dir(self.data_dir, model_id) / STATE_FILE
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return empty_state(model_id, meta)
        return state

    def mirror(
        self, model_id: str, state: dict[str, Any], only_changed_from: dict[str, Any] | None
    ) -> None:
        """Copy each version's stage and history into its metadata.json."""
        for version, entry in state["versions"].items():
            old = (only_changed_from or {}).get("versions", {}).get(version)
            if only_changed_from is not None and old == entry:
                continue
            path = artifacts.model_dir(self.data_dir, model_id) / version
            try:
                meta = artifacts.read_metadata(path)
            except artifacts.ArtifactCorrupt:
                continue
            if (
                meta.get("stage_history") == entry["history"]
                and meta.get("stage") == entry["stage"]
            ):
                continue
            artifacts.rewrite_metadata(
                path, {**meta, "stage": entry["stage"], "stage_history": entry["history"]}
            )


def new_entry(meta: Mapping[str, Any], head_to_head: HeadToHead | None) -> dict[str, Any]:
    """A state entry for a version folder. Its stage is the last one of the
    metadata's history: ``trained`` for a new version, the mirrored stage
    when ``state.json`` was lost and is being rebuilt."""
    history = list(meta.get("stage_history") or [])
    if not history or history[-1].get("stage") not in STAGES:
        history = [{"stage": "trained", "at": meta.get("created_at"), "reason": "registered"}]
    bars = meta.get("data_window", {}).get("bars", {})
    return {
        "stage": history[-1]["stage"],
        "created_at": meta.get("created_at"),
        "metrics": meta.get("metrics", {}),
        "data_last_ts": bars.get("last_ts"),
        "head_to_head": None if head_to_head is None else head_to_head.to_dict(),
        "verdict": None,
        "history": history,
    }


def empty_state(model_id: str, meta: Mapping[str, Any] | None) -> dict[str, Any]:
    key = ModelKey.parse(model_id)
    meta = meta or {}
    return {
        "model_id": model_id,
        "family": meta.get("family", key.family),
        "symbol": meta.get("symbol", key.symbol),
        "tf": meta.get("tf", key.tf),
        "active": None,
        "versions": {},
        "outbox": [],
        "commands": [],
    }


def previous_active(state: dict[str, Any]) -> str | None:
    """The retired version whose last active period ended most recently."""
    best: tuple[str, str] | None = None
    for version, entry in state["versions"].items():
        if entry["stage"] != "retired" or version == state["active"]:
            continue
        was_active = [h for h in entry["history"] if h["stage"] == "active"]
        if was_active:
            ended = entry["history"][-1]["at"]
            if best is None or ended > best[0]:
                best = (ended, version)
    return None if best is None else best[1]


def is_model_id(name: str) -> bool:
    try:
        ModelKey.parse(name)
    except ValueError:
        return False
    return not name.startswith(".")


def check_model_id(model_id: str) -> None:
    if not is_model_id(model_id) or "/" in model_id or model_id in (".", ".."):
        raise RegistryError(f"not a model id (family_SYMBOL_TF): {model_id!r}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to ``path`` so that a reader sees the old or the new file,
    never a part, and a crash keeps one of them (temp, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as fh:
        json.dump(value, fh, indent=1, sort_keys=True, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
