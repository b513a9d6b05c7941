"""The registry's read side: which models and versions exist, their stages,
``models show``, the outbox still to publish (see ``registry``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from quantum_daemon.domain.events import Event
from quantum_daemon.domain.stages import Stage
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.errors import RegistryError
from quantum_daemon.storage.registry.files import StateFiles, is_model_id
from quantum_daemon.storage.registry.state import ModelState

ZOO_TRIALS_FILE = "trials.json"  # under models/: trials of the zoo as a whole


@dataclass(frozen=True)
class VersionInfo:
    """One version, as ``models list --json`` prints it."""

    model_id: str
    family: str
    symbol: str
    tf: str
    version: str
    stage: Stage
    created_at: str | None
    metrics: Mapping[str, Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    tuning: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "family": self.family,
            "symbol": self.symbol,
            "tf": self.tf,
            "version": self.version,
            "stage": self.stage.value,
            "created_at": self.created_at,
            "metrics": dict(self.metrics),
            "params": dict(self.params),
            "tuning": dict(self.tuning) or None,
        }


class RegistryViews:
    """Reads the state of every model under ``data_dir/models``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / artifacts.MODELS_DIR
        self.files = StateFiles(self.data_dir)

    def model_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_model_id(p.name))

    def versions(self, model_id: str | None = None) -> list[VersionInfo]:
        ids = self.model_ids() if model_id is None else [model_id]
        return [info for mid in ids for info in _infos(self.files.read(mid))]

    def active_version(self, model_id: str) -> str | None:
        return self.files.read(model_id).active

    def stage(self, model_id: str, version: str) -> Stage:
        return self.files.read(model_id).version(version).stage

    def version_path(self, model_id: str, version: str) -> Path:
        return artifacts.model_dir(self.data_dir, model_id) / version

    def show(self, model_id: str) -> dict[str, Any]:
        """The model and every version with its full record, as JSON."""
        state = self.files.read(model_id)
        if not state.versions:
            raise RegistryError(f"unknown model {model_id!r} (no versions under {self.root})")
        folder = artifacts.model_dir(self.data_dir, model_id)
        return {
            "model_id": model_id,
            "family": state.family,
            "symbol": state.symbol,
            "tf": state.tf,
            "active": state.active,
            "pending_events": len(state.outbox),
            "archived": state.archived,  # finished versions in archive.jsonl, not listed
            "trials": {**state.trials, "total": state.n_trials, "zoo": self.zoo_trials()},
            "versions": [
                {"version": v, **record.to_json(), "path": str(folder / v)}
                for v, record in sorted(state.versions.items())
            ],
        }

    def trials(self, model_id: str) -> int:
        """The model's trials so far (its ledger)."""
        return self.files.read(model_id).n_trials

    def ledger(self, model_id: str) -> dict[str, int]:
        """The model's trials by kind, and their total."""
        state = self.files.read(model_id)
        return {**state.trials, "total": state.n_trials}

    def zoo_trials(self) -> int:
        """Every model's trials so far and the zoo's own (``trials.json``:
        simulated variants): the zoo's ledger."""
        own = sum(self.files.read(mid).n_trials for mid in self.model_ids())
        return own + sum(self.zoo_ledger().values())

    def zoo_ledger(self) -> dict[str, int]:
        """Trials that belong to no one model (``models/trials.json``)."""
        try:
            raw = json.loads((self.root / ZOO_TRIALS_FILE).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{self.root / ZOO_TRIALS_FILE}: unreadable ({exc})") from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in raw.items()
        ):
            raise RegistryError(f"{self.root / ZOO_TRIALS_FILE}: not a trial ledger")
        return raw

    def n_trials(self, model_id: str, scope: str, floor: int) -> int:
        """The ``n_trials`` that deflates the model's record: its own trials
        (``model``), the zoo's (``zoo``) or none (``config``), at least ``floor``."""
        counted = {"zoo": self.zoo_trials, "model": lambda: self.trials(model_id)}
        return max(floor, counted[scope]() if scope in counted else 0)

    def newest(self, model_id: str) -> tuple[float, int] | None:
        """(creation time in epoch s, open time of its last bar in ms) of the
        newest version: when the model last trained, on which data."""
        state = self.files.read(model_id)
        if not state.versions:
            return None
        record = state.versions[max(state.versions)]
        created = 0.0 if record.created_at is None else _epoch_s(record.created_at)
        return created, record.data_last_ts or 0

    def previous_active(self, model_id: str) -> str | None:
        """The version that ``rollback`` would bring back."""
        return self.files.read(model_id).previous_active()

    def verify(self, model_id: str, version: str) -> None:
        """Check every artifact's sha256; raises ``artifacts.ArtifactCorrupt``."""
        artifacts.load_version(self.version_path(model_id, version))

    def pending_events(self) -> list[Event]:
        """Every model's outbox: events written but not yet confirmed published."""
        return [e for mid in self.model_ids() for e in self.files.read(mid).outbox]


def _infos(state: ModelState) -> list[VersionInfo]:
    return [
        VersionInfo(
            state.model_id,
            state.family,
            state.symbol,
            state.tf,
            version,
            record.stage,
            record.created_at,
            record.metrics,
            record.params,
            record.tuning,
        )
        for version, record in sorted(state.versions.items())
    ]


def _epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
