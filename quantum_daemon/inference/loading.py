"""The worker's models: which versions it holds, loading them, noticing changes.

The worker holds the ``active`` version and the ``max_candidates`` newest
``candidate`` versions of every model in the registry. Each artifact is
sha256-checked by ``artifacts.load_version``; a refused one is reported
back, never loaded, and a version that failed to load is not tried again by
this worker. The registry's state stamp (mtime and size of every
``state.json``) tells when something changed (a promotion, a retirement, a
new candidate).

Imported by the worker before its thread counts are pinned: model libraries
and numpy are imported lazily, by the families this process loads.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.stages import Stage
from quantum_daemon.inference.messages import (
    InferenceWorkerSettings,
    LoadedModel,
    LoadProblem,
    LoadReport,
)
from quantum_daemon.storage.registry.files import STATE_FILE

if TYPE_CHECKING:
    from quantum_daemon.storage.registry.registry import Registry

VersionKey = tuple[str, str]  # (model_id, version)
Stamp = tuple[tuple[str, int, int], ...]


@dataclass
class LiveModel:
    """A loaded version and what answering with it needs."""

    info: LoadedModel
    model: Any

    @property
    def is_sizer(self) -> bool:
        return self.info.family in SIZER_FAMILIES


class ModelLoader:
    """Loads the wanted versions from the registry and reports what is held."""

    def __init__(self, settings: InferenceWorkerSettings, registry: Registry, log: Any) -> None:
        self.settings = settings
        self.registry = registry
        self.log = log
        self.overrides = dict(settings.family_classes)
        self.stamp: Stamp | None = None
        self.failed: dict[VersionKey, LoadProblem] = {}
        self.reported: tuple[object, ...] | None = None
        self._wanted: dict[VersionKey, Stage] = {}  # as of the last ``hold``

    def changed(self) -> bool:
        """Whether the registry was written since the last ``hold``."""
        return registry_stamp(self.registry.root) != self.stamp

    def hold(self, held: dict[VersionKey, LiveModel]) -> dict[VersionKey, LiveModel]:
        """Exactly the wanted versions: the held ones kept (with their stage
        now), the new ones loaded, the rest dropped."""
        self.stamp = registry_stamp(self.registry.root)
        wanted = self.wanted()
        kept = {key: held[key] for key in wanted if key in held}
        for key, stage in wanted.items():
            if key in kept:
                kept[key].info = _with_stage(kept[key].info, stage)
            elif key not in self.failed:
                loaded = self.load(key[0], key[1], stage)
                if loaded is not None:
                    kept[key] = loaded
        self._wanted = wanted
        return kept

    def report(self, held: Mapping[VersionKey, LiveModel], started: float) -> LoadReport:
        """The report of what ``hold`` left, logged when it differs from the last one."""
        report = LoadReport(
            pid=os.getpid(),
            loaded=tuple(m.info for m in held.values()),
            problems=tuple(p for k, p in self.failed.items() if k in self._wanted),
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

    def wanted(self) -> dict[VersionKey, Stage]:
        """(model_id, version) -> stage: every active version and each
        model's ``max_candidates`` newest candidates (the daemon retires
        older ones as superseded)."""
        wanted: dict[VersionKey, Stage] = {}
        for model_id in self.registry.model_ids():
            infos = self.registry.versions(model_id)
            for info in infos:
                if info.stage == Stage.ACTIVE:
                    wanted[(model_id, info.version)] = Stage.ACTIVE
            candidates = sorted(i.version for i in infos if i.stage == Stage.CANDIDATE)
            for version in candidates[-self.settings.max_candidates :]:
                wanted[(model_id, version)] = Stage.CANDIDATE
        return wanted

    def load(self, model_id: str, version: str, stage: Stage) -> LiveModel | None:
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


def registry_stamp(root: Path) -> Stamp:
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


def _with_stage(info: LoadedModel, stage: Stage) -> LoadedModel:
    return info if info.stage == stage else replace(info, stage=stage)
