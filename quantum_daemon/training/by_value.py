"""Training jobs by value: for workers that share no disk with the daemon (Ray).

A job's inputs go to the worker inside the job and its outputs come back
inside the answer, so the worker never opens the daemon's data dir:

- ``pack_job(fn, spec, max_bytes)`` (daemon side, in a thread): the frozen
  ``TrainJobSpec`` (bars as arrays, params, seed, recorded signals) with the
  data dir blanked and the active version's folder read into memory, each
  file checked against its ``metadata.json`` sha256 (for the head to head);
- ``run_by_value(job)`` (worker side): a fresh temporary folder on the
  worker holds the active version and the data dir of the job; ``fn`` runs
  there, and the new version folder comes back as ``{relative path: bytes}``
  with the sha256 of every file; the temporary folder is removed;
- ``receive_version(data_dir, shipped, max_bytes)`` (daemon side, in a
  thread): every file's sha256 is checked again, and against the metadata's
  artifact checksums, the files are written into a hidden staging folder
  beside the version's final place, fsynced and renamed into place
  (``artifacts``: a reader sees a whole version or none). A refused version
  (``VersionRefused``) leaves nothing behind, so nothing is registered.

Both directions are bounded by ``max_bytes`` (``[training.ray]
max_version_mb``): a version folder is small, and a larger one is an error
that names the limit, not a flood through the object store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from quantum_daemon.storage import artifacts
from quantum_daemon.training.executor import JobFn
from quantum_daemon.training.jobs import ActiveRef, TrainJobResult, TrainJobSpec

ACTIVE_DIR = "active"  # in the worker's temporary folder: the active version
DATA_DIR = "data"  # in the worker's temporary folder: the job's data dir


class VersionRefused(ValueError):
    """Files that travelled between daemon and worker are not a sound version
    folder (checksum, size, path or name); nothing of them is kept."""


@dataclass(frozen=True)
class FolderFiles:
    """A version folder by value: every file's bytes and sha256 by its path
    relative to the folder (POSIX form)."""

    files: Mapping[str, bytes]
    sha256: Mapping[str, str]

    @property
    def total_bytes(self) -> int:
        return sum(len(data) for data in self.files.values())

    @classmethod
    def read(cls, folder: Path, max_bytes: int, what: str) -> FolderFiles:
        files: dict[str, bytes] = {}
        total = 0
        for path in sorted(Path(folder).rglob("*")):
            if path.is_symlink():
                raise VersionRefused(f"{what}: {path.name} is a symbolic link")
            if not path.is_file() or _is_temporary(path):
                continue
            total += path.stat().st_size
            _check_size(total, max_bytes, what)
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
        return cls(files, {name: _sha256(data) for name, data in files.items()})

    def verify(self, max_bytes: int, what: str) -> None:
        """The sizes, paths and checksums are sound, and every artifact the
        metadata lists is here with the sha256 the metadata says."""
        _check_size(self.total_bytes, max_bytes, what)
        if set(self.files) != set(self.sha256):
            raise VersionRefused(f"{what}: the checksums do not list the same files")
        for name, data in self.files.items():
            safe_relative(name, what)
            if _sha256(data) != self.sha256[name]:
                raise VersionRefused(f"{what}: {name} does not match its sha256")
        meta = self.metadata(what)
        for name, expected in meta["artifacts"].items():
            if self.sha256.get(name) != expected:
                raise VersionRefused(f"{what}: artifact {name} is missing or not as its metadata")

    def metadata(self, what: str) -> dict[str, Any]:
        raw = self.files.get(artifacts.METADATA_FILE)
        if raw is None:
            raise VersionRefused(f"{what}: no {artifacts.METADATA_FILE}")
        try:
            meta = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise VersionRefused(f"{what}: {artifacts.METADATA_FILE} is not JSON: {exc}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("artifacts"), dict):
            raise VersionRefused(f"{what}: {artifacts.METADATA_FILE} lacks the artifacts")
        return meta

    def write(self, folder: Path) -> None:
        for name, data in self.files.items():
            path = folder / safe_relative(name, str(folder))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


@dataclass(frozen=True)
class PackedJob:
    """What travels to the worker: the job function, its spec with no path
    of the daemon's disk in it, and the active version's files."""

    fn: JobFn
    spec: TrainJobSpec
    active: FolderFiles | None
    max_bytes: int
    active_refused: str = ""  # why the active version's files stayed home (corrupt)


@dataclass(frozen=True)
class ShippedVersion:
    """What travels back: the job's result and its new version folder."""

    result: TrainJobResult
    folder: FolderFiles


def pack_job(fn: JobFn, spec: TrainJobSpec, max_bytes: int) -> PackedJob:
    """The job by value (reads the active version folder: run it in a thread)."""
    active, refused = None, ""
    if spec.active is not None:
        active_dir = Path(spec.active.path)
        try:
            artifacts.load_version(active_dir)
        except artifacts.ArtifactCorrupt as exc:  # the job refuses it, as in the local pool
            refused = str(exc)
        else:
            what = f"active version {spec.active.version}"
            active = FolderFiles.read(active_dir, max_bytes, what)
    blank_active = None if spec.active is None else ActiveRef(spec.active.version, "")
    remote_spec = dataclasses.replace(spec, data_dir="", active=blank_active)
    return PackedJob(fn, remote_spec, active, max_bytes, refused)


def run_by_value(job: PackedJob) -> ShippedVersion:
    """Worker side: run the job in a temporary folder of the worker's own
    disk and return its version folder by value."""
    with tempfile.TemporaryDirectory(prefix="quantum-job-") as tmp:
        root = Path(tmp)
        spec = dataclasses.replace(job.spec, data_dir=str(root / DATA_DIR))
        if spec.active is not None:
            active_dir = root / ACTIVE_DIR
            active_dir.mkdir()  # empty when the daemon refused to send it: the job refuses it
            if job.active is not None:
                job.active.verify(job.max_bytes, f"active version {spec.active.version}")
                job.active.write(active_dir)
            spec = dataclasses.replace(spec, active=ActiveRef(spec.active.version, str(active_dir)))
        result: TrainJobResult = job.fn(spec)
        folder = _inside(Path(result.artifact_dir), root / DATA_DIR)
        files = FolderFiles.read(folder, job.max_bytes, f"version {result.version}")
    return ShippedVersion(_as_sent(result, job), files)


def _as_sent(result: TrainJobResult, job: PackedJob) -> TrainJobResult:
    """The result without the worker's paths; a refusal of the active version
    gives the daemon's reason (the worker saw only an empty folder)."""
    h2h = result.head_to_head
    if job.active_refused and h2h is not None and h2h.refused:
        h2h = dataclasses.replace(h2h, refused=job.active_refused)
    return dataclasses.replace(result, artifact_dir="", head_to_head=h2h)


def receive_version(data_dir: Path, shipped: ShippedVersion, max_bytes: int) -> TrainJobResult:
    """Daemon side: check the shipped version and commit it atomically under
    ``data_dir``; returns the result with the folder's path there."""
    result = shipped.result
    what = f"version {result.version} of {result.model_id}"
    shipped.folder.verify(max_bytes, what)
    meta = shipped.folder.metadata(what)
    if meta.get("model_id") != result.model_id or meta.get("version") != result.version:
        raise VersionRefused(
            f"{what}: the metadata names {meta.get('model_id')} {meta.get('version')}"
        )
    parent = artifacts.model_dir(data_dir, result.model_id)
    final = parent / checked_version(result.version, what)
    if final.exists():
        raise VersionRefused(f"{what}: {final} exists already")
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        shipped.folder.write(staging)
        artifacts.fsync_tree(staging)
        os.rename(staging, final)  # a racing writer's folder makes this fail: refused, not mixed
        artifacts.fsync_dir(parent)
    except OSError as exc:
        raise VersionRefused(f"{what}: cannot commit it: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(result, artifact_dir=str(final))


def checked_version(version: str, what: str) -> str:
    """``version`` if it is a version name (``vYYYYMMDD_HHMMSS``), nothing else."""
    try:
        parsed = datetime.strptime(version, artifacts.VERSION_FORMAT)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.strftime(artifacts.VERSION_FORMAT) != version:
        raise VersionRefused(f"{what}: {version!r} is not a version name")
    return version


def safe_relative(name: str, what: str) -> PurePosixPath:
    """``name`` as a path that stays inside its folder."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise VersionRefused(f"{what}: {name!r} is not a path inside the version folder")
    return path


def _inside(folder: Path, root: Path) -> Path:
    if not folder.resolve().is_relative_to(root.resolve()):
        raise VersionRefused(f"the job wrote its version to {folder}, outside its data dir")
    return folder


def _is_temporary(path: Path) -> bool:
    """A metadata rewrite's temporary file (``artifacts._write_json``): not part of the version."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _check_size(total: int, max_bytes: int, what: str) -> None:
    if total > max_bytes:
        raise VersionRefused(
            f"{what}: {total / 2**20:.1f} MiB of files exceed the limit of "
            f"{max_bytes / 2**20:.1f} MiB ([training.ray] max_version_mb)"
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
