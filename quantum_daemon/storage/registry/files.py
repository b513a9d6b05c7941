"""The registry's files: each model's ``state.json``, its lock, atomic writes,
and the stage mirror in each version's ``metadata.json`` (see ``registry``).

``StateFiles.edit`` is the one way to change a model's state: a
read-modify-write under an exclusive ``flock`` of the model (the daemon and
the CLI may both write), one atomic replace of ``state.json`` (temp file,
fsync, rename, fsync of the folder) if its text changed, then the mirror.
The state is a typed ``state.ModelState``; JSON is read and written here only.

``StateFiles.read`` parses a file once per version of it on disk (keyed by
inode, size and mtime: every write is a new file by rename) and hands the
same ``ModelState`` to every reader until the file changes: the views scan
every model at each refresh, and at hundreds of models the parsing was most
of the daemon's I/O threads' time. Readers treat it as read-only; ``edit``
always reads the file afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from quantum_daemon.domain import ids
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.errors import RegistryError, StateCorrupt
from quantum_daemon.storage.registry.state import KEEP_FINISHED, Mirrored, ModelState

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
ARCHIVE_FILE = "archive.jsonl"  # finished versions beyond the newest KEEP_FINISHED, one a line


class StateFiles:
    """Reads and atomically rewrites the per-model state files under ``data_dir/models``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._parsed: dict[str, tuple[tuple[int, int, int], ModelState]] = {}

    @contextlib.contextmanager
    def edit(self, model_id: str, meta: Mapping[str, Any] | None = None) -> Iterator[ModelState]:
        """Read-modify-write of the model's state under its lock: one atomic
        write if its text changed, then the metadata mirror."""
        check_model_id(model_id)
        folder = artifacts.model_dir(self.data_dir, model_id)
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / LOCK_FILE):
            text, state = self._read(model_id, meta)
            before = text if text is not None else encode_state(state)
            mirrored = state.mirrored()
            yield state
            self._archive(folder, state, mirrored)
            after = encode_state(state)
            if after != before:
                write_text_atomic(folder / STATE_FILE, after)
                self.mirror(model_id, state, only_changed_from=mirrored)

    def read(self, model_id: str, meta: Mapping[str, Any] | None = None) -> ModelState:
        """The model's state; an empty one when it has no ``state.json`` yet.
        Raises ``StateCorrupt`` for a file that is not a registry state.
        Shared between readers until the file changes: do not modify it."""
        check_model_id(model_id)
        path = artifacts.model_dir(self.data_dir, model_id) / STATE_FILE
        try:
            st = os.stat(path)  # before the read: a newer file never hides under an older key
        except FileNotFoundError:
            return ModelState.empty(model_id, meta)
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._parsed.get(model_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        text, state = self._read(model_id, meta)
        if text is not None:
            self._parsed[model_id] = (key, state)
        return state

    def _read(self, model_id: str, meta: Mapping[str, Any] | None) -> tuple[str | None, ModelState]:
        """The file's text (None when there is none) and the state it holds."""
        check_model_id(model_id)
        path = artifacts.model_dir(self.data_dir, model_id) / STATE_FILE
        try:
            text = path.read_text()
            raw = json.loads(text)
        except FileNotFoundError:
            return None, ModelState.empty(model_id, meta)
        except ValueError as exc:  # also a file that is not UTF-8
            raise StateCorrupt(f"{self._shown(path)} is not valid JSON: {exc}") from None
        try:
            return text, ModelState.from_json(_checked_object(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problem = _describe(exc)
            raise StateCorrupt(f"{self._shown(path)} is not a registry state: {problem}") from None

    def _archive(self, folder: Path, state: ModelState, mirrored: Mirrored) -> None:
        """Move the oldest finished versions beyond the newest
        ``KEEP_FINISHED`` to ``archive.jsonl`` (appended and synced before
        the state that drops them is written: a crash between leaves a
        version in both, and the state wins), so that ``state.json``, read
        whole by every view and transition, stays bounded. Only versions
        finished before this edit go: their metadata mirror is up to date."""
        finished = [v for v in state.finished() if v in mirrored]
        old = finished[: max(0, len(finished) - KEEP_FINISHED)]
        if not old:
            return
        lines = "".join(
            json.dumps({"version": v, **state.versions[v].to_json()}, sort_keys=True, default=str)
            + "\n"
            for v in old
        )
        with (folder / ARCHIVE_FILE).open("a") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())
        for version in old:
            del state.versions[version]
        state.archived += len(old)

    def archived_versions(self, model_id: str) -> set[str]:
        """The names of the model's archived versions (read at start-up only)."""
        path = artifacts.model_dir(self.data_dir, model_id) / ARCHIVE_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return set()
        names = set()
        for line in text.splitlines():
            try:
                names.add(str(json.loads(line)["version"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line a crash cut short: its version is still in the state
        return names

    def _shown(self, path: Path) -> str:
        """``path`` for an error message: from the data dir on, which stays unnamed."""
        return f"{{data_dir}}/{path.relative_to(self.data_dir)}"

    def mirror(self, model_id: str, state: ModelState, only_changed_from: Mirrored | None) -> None:
        """Copy each version's stage and history into its metadata.json
        (only those that differ from ``only_changed_from``, when given)."""
        now = state.mirrored()
        for version, record in state.versions.items():
            if only_changed_from is not None and only_changed_from.get(version) == now[version]:
                continue
            path = artifacts.model_dir(self.data_dir, model_id) / version
            try:
                meta = artifacts.read_metadata(path)
            except artifacts.ArtifactCorrupt:
                continue
            history = [h.to_json() for h in record.history]
            if meta.get("stage_history") == history and meta.get("stage") == record.stage:
                continue
            artifacts.rewrite_metadata(
                path, {**meta, "stage": record.stage.value, "stage_history": history}
            )


def _checked_object(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise TypeError(f"expected a JSON object, found {type(raw).__name__}")
    return raw


def _describe(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def is_model_id(name: str) -> bool:
    return ids.is_model_id(name)


def check_model_id(model_id: str) -> None:
    """``domain.ids.check_model_id``, refused as a ``RegistryError``."""
    try:
        ids.check_model_id(model_id)
    except ids.BadIdentifier as exc:
        raise RegistryError(str(exc)) from None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def encode_state(state: ModelState) -> str:
    """The text of ``state.json``: one line, keys sorted. (An indented file
    needs the pure-Python encoder: in ``simulate`` that was a tenth of the
    main process's time; ``models show`` is the readable view.)"""
    return json.dumps(state.to_json(), sort_keys=True, default=str) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new file,
    never a part, and a crash keeps one of them (temp, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
