"""The webhook wire format (docs/push.md): what a receiver gets and how it
checks that the daemon sent it.

A delivery is one ``POST`` with a JSON body (``delivery_body``) and the
headers of ``delivery_headers``, modelled on MLflow's model-registry
webhooks:

- ``X-Quantum-Delivery``: the delivery id, the same on every attempt and
  after a restart (a receiver drops a repeat by it);
- ``X-Quantum-Timestamp``: seconds since the epoch when this attempt was
  signed (a receiver refuses old ones: replay protection);
- ``X-Quantum-Event``: the event type;
- ``X-Quantum-Signature``: ``sha256=`` and the hex HMAC-SHA256, keyed by the
  shared secret, of ``"{timestamp}.{body}"`` (the raw body bytes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence

from quantum_daemon.domain.events import Event

SIGNATURE_HEADER = "X-Quantum-Signature"
TIMESTAMP_HEADER = "X-Quantum-Timestamp"
DELIVERY_HEADER = "X-Quantum-Delivery"
EVENT_HEADER = "X-Quantum-Event"
SIGNATURE_PREFIX = "sha256="


def target_id(url: str) -> str:
    """A short, stable name of a webhook URL that reveals nothing of it."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def delivery_id(url: str, stream_id: str) -> str:
    """The id of the delivery of one ``quantum:events`` entry to one URL."""
    return f"{stream_id}.{target_id(url)}"


def wanted(event_type: str, prefixes: Sequence[str]) -> bool:
    """Whether an event of ``event_type`` goes out: every type when no prefix
    is configured, else those that start with one (``model.``)."""
    return not prefixes or any(event_type.startswith(p) for p in prefixes)


def delivery_body(event: Event, stream_id: str, delivery: str) -> bytes:
    """The JSON body of one delivery."""
    body = {
        "delivery_id": delivery,
        "stream_id": stream_id,
        "type": event.type,
        "event_id": event.data.get("event_id"),
        "timestamp": event.data.get("timestamp"),
        "data": dict(event.data),
    }
    return json.dumps(body, default=str, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + digest.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, given: str) -> bool:
    """What a receiver does (in constant time); False for a malformed timestamp."""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), given)


def delivery_headers(
    secret: str, event_type: str, delivery: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery,
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: event_type,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }
