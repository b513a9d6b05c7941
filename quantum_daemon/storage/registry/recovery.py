"""The registry at start-up, after a crash (see ``registry``): version folders
that a worker wrote but the daemon never recorded are registered, the stage
mirror in every ``metadata.json`` is repaired, and temporary folders of
killed workers are removed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from quantum_daemon.domain.stages import Stage
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage import artifacts

if TYPE_CHECKING:
    from quantum_daemon.storage.registry.registry import Registry

log = get_logger()

STALE_TMP_S = 600.0  # a worker's temporary version folder lives seconds; older ones are debris


def recover(registry: Registry) -> list[tuple[str, str]]:
    """Crash recovery; returns the (model_id, version) still ``trained``
    (they await their verdict)."""
    waiting: list[tuple[str, str]] = []
    for model_id in registry.model_ids():
        remove_stale_tmp(artifacts.model_dir(registry.data_dir, model_id))
        known = set(registry.files.read(model_id).versions)
        known |= registry.files.archived_versions(model_id)
        for version in artifacts.list_versions(registry.data_dir, model_id):
            if version not in known:  # one read per model, not one per version
                adopt(registry, model_id, version)
        state = registry.files.read(model_id)
        registry.files.mirror(model_id, state, only_changed_from=None)
        waiting += [(model_id, v) for v in state.versions_at(Stage.TRAINED)]
    return sorted(waiting)


def adopt(registry: Registry, model_id: str, version: str) -> None:
    """Register a version folder that the state does not know yet."""
    if version in registry.files.read(model_id).versions:
        return
    try:
        registry.register(model_id, version, job_id="recovered")
    except artifacts.ArtifactCorrupt as exc:
        log.warning(
            "registry.unreadable_version", model_id=model_id, version=version, error=str(exc)
        )
        return
    log.info("registry.adopted", model_id=model_id, version=version)


def remove_stale_tmp(folder: Path) -> None:
    for tmp in folder.glob(".tmp-*"):
        if tmp.is_dir() and time.time() - tmp.stat().st_mtime > STALE_TMP_S:
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("registry.removed_stale_tmp", path=str(tmp))
