"""Lifecycle events as values (DESIGN §5): their types, and ``Event`` with the
id that makes publishing them exactly once possible.

An event's ``data`` holds ``event_id``, ``model_id``, ``family``,
``symbol``, ``tf``, ``version``, ``timestamp`` (ISO 8601, UTC, when it
happened) and the event's own fields. Publishing (Redis) and the outbox
flusher live in ``storage.events``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

TRAINING_STARTED = "training.started"
TRAINING_COMPLETED = "training.completed"
TRAINING_FAILED = "training.failed"
MODEL_REGISTERED = "model.registered"
MODEL_EVALUATED = "model.evaluated"
MODEL_PROMOTED = "model.promoted"
MODEL_REJECTED = "model.rejected"
MODEL_RETIRED = "model.retired"
MODEL_LOAD_REFUSED = "model.load_refused"
MODEL_DRIFT_DETECTED = "model.drift_detected"
MODEL_STALE = "model.stale"
ENSEMBLE_KILLED = "ensemble.kill_switch"
ENSEMBLE_RELEASED = "ensemble.kill_switch_released"
CONTROL_APPLIED = "control.applied"
CONTROL_REJECTED = "control.rejected"


@dataclass(frozen=True)
class Event:
    type: str
    data: Mapping[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.data["event_id"])

    @property
    def model_id(self) -> str | None:
        value = self.data.get("model_id")
        return None if value is None else str(value)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "data": dict(self.data)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Event:
        return cls(str(raw["type"]), dict(raw["data"]))

    def fields(self) -> dict[str, str]:
        return {"type": self.type, "data": json.dumps(self.data, default=str)}


def make_event(
    type: str,
    *,
    model_id: str,
    family: str,
    symbol: str,
    tf: str,
    version: str | None,
    at: datetime,
    transition: str,
    **fields: Any,
) -> Event:
    """An event whose id is ``type|model_id|version|transition``."""
    event_id = f"{type}|{model_id}|{version or '-'}|{transition}"
    data = {
        "event_id": event_id,
        "model_id": model_id,
        "family": family,
        "symbol": symbol,
        "tf": tf,
        "version": version,
        "timestamp": at.isoformat(),
        **fields,
    }
    return Event(type, data)
