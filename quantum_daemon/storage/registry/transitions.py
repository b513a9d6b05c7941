"""The moves of one registry write on a model's state, and their events.

A ``Transition`` wraps the ``ModelState`` that ``StateFiles.edit`` yields:
stages move only along ``domain.stages.NEXT_STAGES``, each move appends to
the version's history, at most one version is active (activating one
retires the one it replaces), and every event goes into the state's outbox,
so that the transition and its events are one atomic write.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from quantum_daemon.domain.events import MODEL_PROMOTED, MODEL_RETIRED, Event, make_event
from quantum_daemon.domain.stages import NEXT_STAGES, Stage
from quantum_daemon.storage.registry.errors import RegistryError
from quantum_daemon.storage.registry.state import HistoryEntry, ModelState, VersionRecord

Clock = Callable[[], datetime]


class Transition:
    """Moves and events on one model's state, within one write."""

    def __init__(self, state: ModelState, clock: Clock) -> None:
        self.state = state
        self.clock = clock

    def emit(self, type: str, version: str, transition: str, **fields: Any) -> list[Event]:
        """Put an event in the outbox; ``transition`` makes its id unique per version."""
        state = self.state
        event = make_event(
            type,
            model_id=state.model_id,
            family=state.family,
            symbol=state.symbol,
            tf=state.tf,
            version=version,
            at=self.clock(),
            transition=transition,
            **fields,
        )
        state.outbox.append(event)
        return [event]

    def move(self, version: str, stage: Stage, reason: str) -> VersionRecord:
        """One step along the allowed stages; raises ``RegistryError`` otherwise."""
        record = self.state.version(version)
        stage = Stage(stage)  # a plain string from a caller is stored as the member
        if stage not in NEXT_STAGES[record.stage]:
            raise RegistryError(
                f"{self.state.model_id} {version}: {record.stage} -> {stage} is not allowed"
            )
        record.stage = stage
        at = self.clock().astimezone(UTC).isoformat()
        record.history.append(HistoryEntry(stage, at, reason))
        if stage is Stage.ACTIVE:
            self.state.active = version
        elif self.state.active == version:
            self.state.active = None
        return record

    def activate(self, version: str, reason: str) -> list[Event]:
        """Make ``version`` the active one, retiring the version it replaces."""
        previous = self.state.active
        events: list[Event] = []
        if previous is not None and previous != version:
            events += self.retire(previous, f"replaced by {version}", replaced_by=version)
        record = self.move(version, Stage.ACTIVE, reason)
        return events + self.emit(
            MODEL_PROMOTED,
            version,
            record.step,
            **{"from": previous, "to": version},
            reason=reason,
            metrics=record.metrics,
        )

    def retire(
        self, version: str, reason: str, replaced_by: str | None, detail: str | None = None
    ) -> list[Event]:
        record = self.move(
            version, Stage.RETIRED, reason if detail is None else f"{reason}: {detail}"
        )
        extra = {} if detail is None else {"detail": detail}
        return self.emit(
            MODEL_RETIRED,
            version,
            record.step,
            reason=reason,
            replaced_by=replaced_by,
            **extra,
        )
