"""The registry's storage layer: one folder per model version, written atomically.

``data_dir/models/{model_id}/{version}/`` holds the artifact file(s) in the
library's own format and ``metadata.json``: family, model_id
(``{family}_{SYMBOL}_{TF}``), version (``vYYYYMMDD_HHMMSS`` UTC), data window,
features, hyper-parameters, seed, library versions, metrics, the sha256 of
every artifact file (``artifacts``), the family's own state (``model``) and
the stage history (``stage_history``, starting with ``trained``).

A version is written into a hidden temporary folder beside its final place,
every file and the folder are fsynced, then the folder is renamed into place:
a reader sees a whole version or none. ``load_version`` checks every sha256
before anything is loaded and raises ``ArtifactCorrupt`` on a mismatch.
Stage transitions belong to the registry, which rewrites the metadata with
``rewrite_metadata`` (atomic replace).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from quantum_daemon.domain.ids import check_model_id
from quantum_daemon.domain.stages import Stage

METADATA_FILE = "metadata.json"
MODELS_DIR = "models"
VERSION_FORMAT = "v%Y%m%d_%H%M%S"
_MAX_VERSION_TRIES = 3600


class ArtifactCorrupt(Exception):
    """A version folder whose files do not match its metadata (missing, altered)."""


@dataclass(frozen=True)
class StoredVersion:
    model_id: str
    version: str
    path: Path
    metadata: Mapping[str, Any]


def model_id_for(family: str, symbol: str, tf: str) -> str:
    return f"{family}_{symbol}_{tf}"


def model_dir(data_dir: Path, model_id: str) -> Path:
    """The model's folder; ``domain.ids.BadIdentifier`` for a malformed id
    (nothing unvalidated becomes a path)."""
    return Path(data_dir) / MODELS_DIR / check_model_id(model_id)


def version_name(now: datetime) -> str:
    return now.astimezone(UTC).strftime(VERSION_FORMAT)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_entry(stage: Stage, at: datetime, reason: str) -> dict[str, str]:
    return {"stage": stage.value, "at": at.astimezone(UTC).isoformat(), "reason": reason}


def write_version(
    data_dir: Path,
    model_id: str,
    write_files: Callable[[Path], list[Path]],
    metadata: Mapping[str, Any],
    now: datetime,
) -> StoredVersion:
    """Write a new version of ``model_id``: ``write_files(folder)`` writes the
    artifact file(s) and returns their paths; ``metadata`` is completed with
    model_id, version, the checksums and the ``trained`` stage entry. The
    version is ``now`` in UTC, moved on by a second while that name is taken."""
    parent = model_dir(data_dir, model_id)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        files = write_files(tmp)
        return _commit(parent, tmp, model_id, files, metadata, now)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _commit(
    parent: Path,
    tmp: Path,
    model_id: str,
    files: list[Path],
    metadata: Mapping[str, Any],
    now: datetime,
) -> StoredVersion:
    checksums = {_inside(tmp, f): sha256_of(f) for f in files}
    for moment in (now + timedelta(seconds=i) for i in range(_MAX_VERSION_TRIES)):
        version = version_name(moment)
        if (parent / version).exists():
            continue
        meta = _complete_metadata(metadata, model_id, version, checksums, now)
        _write_json(tmp / METADATA_FILE, meta)
        _fsync_tree(tmp)
        try:
            os.rename(tmp, parent / version)  # fails if a racing writer took the name
        except OSError:
            if (parent / version).exists():
                continue
            raise
        _fsync_dir(parent)
        return StoredVersion(model_id, version, parent / version, meta)
    raise RuntimeError(f"no free version name for {model_id} near {version_name(now)}")


def _inside(folder: Path, file: Path) -> str:
    name = file.resolve().relative_to(folder.resolve()).as_posix()
    if name == METADATA_FILE:
        raise ValueError(f"an artifact may not be called {METADATA_FILE}")
    return name


def _complete_metadata(
    metadata: Mapping[str, Any],
    model_id: str,
    version: str,
    checksums: Mapping[str, str],
    now: datetime,
) -> dict[str, Any]:
    return {
        **metadata,
        "model_id": model_id,
        "version": version,
        "created_at": now.astimezone(UTC).isoformat(),
        "artifacts": dict(checksums),
        "stage_history": [stage_entry(Stage.TRAINED, now, "fitted and evaluated")],
    }


def load_version(path: Path) -> StoredVersion:
    """Read a version folder's metadata after checking every artifact's sha256."""
    path = Path(path)
    metadata = _read_metadata(path)
    for name, expected in metadata.get("artifacts", {}).items():
        file = path / name
        if not file.is_file():
            raise ArtifactCorrupt(f"{path}: artifact {name} is missing")
        actual = sha256_of(file)
        if actual != expected:
            raise ArtifactCorrupt(
                f"{path}: artifact {name} has sha256 {actual}, metadata says {expected}"
            )
    return StoredVersion(metadata["model_id"], metadata["version"], path, metadata)


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / METADATA_FILE).read_text())
    except FileNotFoundError:
        raise ArtifactCorrupt(f"{path}: no {METADATA_FILE}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactCorrupt(f"{path}: {METADATA_FILE} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("artifacts"), dict):
        raise ArtifactCorrupt(f"{path}: {METADATA_FILE} lacks the artifacts checksums")
    return meta


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a version folder, without checking the artifacts."""
    return _read_metadata(Path(path))


def rewrite_metadata(path: Path, metadata: Mapping[str, Any]) -> None:
    """Replace a version's metadata.json atomically (temp file, fsync, rename)."""
    _write_json(Path(path) / METADATA_FILE, dict(metadata))
    _fsync_dir(Path(path))


def list_versions(data_dir: Path, model_id: str) -> list[str]:
    """The committed versions of ``model_id``, oldest first (names sort by time)."""
    folder = model_dir(data_dir, model_id)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("v"))


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("w") as fh:
        json.dump(value, fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            with file.open("rb") as fh:
                os.fsync(fh.fileno())
    for sub in sorted({f.parent for f in folder.rglob("*")} | {folder}):
        _fsync_dir(sub)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under ``folder`` (before renaming it into place)."""
    _fsync_tree(Path(folder))


def fsync_dir(folder: Path) -> None:
    _fsync_dir(Path(folder))
