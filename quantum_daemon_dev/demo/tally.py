"""What the daemon published during the demo, read back from Redis as it
arrives: lifecycle events, signals and trust updates, counted in memory so
that the last summary needs neither the daemon nor Redis any more."""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from quantum_daemon.core.ensemble import Signal, parse_signal
from quantum_daemon.domain.keys import Keys

RECENT = 8  # lifecycle events and judge verdicts kept for the live summary
READ_COUNT = 1000  # entries per XRANGE
# counted, not listed among the recent events: the judge's lines show their verdicts
QUIET_EVENTS = frozenset({"model.registered", "model.evaluated"})


@dataclass
class SeriesSignals:
    published: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    latest: Signal | None = None


@dataclass
class FamilyTrust:
    updates: int = 0
    first_weight: float | None = None  # the weight before its first update
    weight: float | None = None  # after its latest update
    last_loss: float | None = None


@dataclass
class Tally:
    """Counts and the latest of everything the demo shows; ``started`` is
    the demo's start (monotonic), first-seen times are seconds after it."""

    started: float = field(default_factory=time.monotonic)
    signals: dict[str, SeriesSignals] = field(default_factory=dict)
    trust: dict[str, FamilyTrust] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    rejected_by_gate: Counter[str] = field(default_factory=Counter)
    promoted_by_reason: Counter[str] = field(default_factory=Counter)
    retired_by_reason: Counter[str] = field(default_factory=Counter)
    verdicts: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))
    shadow_verdicts: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT))
    first_seen: dict[str, float] = field(default_factory=dict)
    trained_models: set[str] = field(default_factory=set)  # a first job finished

    def seen(self, what: str) -> None:
        self.first_seen.setdefault(what, time.monotonic() - self.started)

    @property
    def signals_published(self) -> int:
        return sum(s.published for s in self.signals.values())

    @property
    def trust_updates(self) -> int:
        return sum(t.updates for t in self.trust.values())

    @property
    def shadow_verdict_count(self) -> int:
        return self.promoted_by_reason["shadow"] + self.retired_by_reason["shadow"]


def add_signal(tally: Tally, series: str, fields: Mapping[bytes, bytes]) -> None:
    signal = parse_signal(fields)
    counts = tally.signals.setdefault(series, SeriesSignals())
    counts.published += 1
    counts.by_status[signal.status] += 1
    counts.latest = signal
    tally.seen("signal")
    tally.seen(f"signal {signal.status}")


def add_trust_update(tally: Tally, family: str, fields: Mapping[bytes, bytes]) -> None:
    f = {k.decode(): v.decode() for k, v in fields.items()}
    trust = tally.trust.setdefault(family, FamilyTrust())
    trust.updates += 1
    if trust.first_weight is None:
        trust.first_weight = float(f["weight_before"])
    trust.weight = float(f["weight_after"])
    trust.last_loss = float(f["loss"])
    tally.seen("trust update")
    if trust.weight != trust.first_weight:
        tally.seen("trust weight moved")


def add_event(tally: Tally, fields: Mapping[bytes, bytes]) -> None:
    kind = fields[b"type"].decode()
    data = json.loads(fields[b"data"])
    tally.events[kind] += 1
    tally.seen(kind)
    line = event_line(kind, data)
    if kind not in QUIET_EVENTS:
        tally.recent.append(line)
    if kind == "model.rejected":
        tally.rejected_by_gate[str(data.get("gate"))] += 1
    elif kind == "model.promoted":
        tally.promoted_by_reason[str(data.get("reason"))] += 1
    elif kind == "model.retired":
        tally.retired_by_reason[_retire_reason(data)] += 1
    if kind in ("training.completed", "training.failed"):
        tally.trained_models.add(str(data.get("model_id")))
    if kind == "model.evaluated":
        tally.verdicts.append(verdict_line(data))
    if _is_shadow_verdict(kind, data):
        tally.shadow_verdicts.append(line)
        tally.seen("shadow verdict")


def who(data: Mapping[str, Any]) -> str:
    return f"{data.get('model_id', '')} {data.get('version', '')}".strip()


def verdict_line(data: Mapping[str, Any]) -> str:
    """The judge's word on one version: its stage and the reason."""
    verdict = data.get("verdict") or {}
    return f"{who(data)}: {verdict.get('stage', '?')}: {verdict.get('reason', '')}"


def event_line(kind: str, data: Mapping[str, Any]) -> str:
    detail = ""
    if kind == "model.promoted":
        detail = f"{data.get('from') or '-'} -> {data.get('to')} ({data.get('reason')})"
    elif kind == "model.retired":
        detail = str(data.get("reason", ""))
        if data.get("detail"):
            detail += f": {data['detail']}"
    elif kind == "model.rejected":
        detail = str(data.get("reason") or data.get("gate") or "")
    elif kind == "training.failed":
        detail = f"{data.get('status')}: {data.get('reason')}"
    elif kind == "training.completed":
        detail = f"in {data.get('seconds', 0):.1f}s"
    elif kind == "training.started":
        detail = ", ".join(data.get("reasons") or ())
    elif kind.startswith("ensemble."):
        detail = f"{data.get('symbol', '')} {data.get('reason', '')}".strip()
    return f"{kind:<19} {who(data):<34} {detail}".rstrip()


def _retire_reason(data: Mapping[str, Any]) -> str:
    """The kind of retirement: ``stale: no training for N bars`` counts as ``stale``."""
    reason = str(data.get("reason", ""))
    for kind in ("stale", "replaced"):
        if reason.startswith(kind):
            return kind
    return reason


def _is_shadow_verdict(kind: str, data: Mapping[str, Any]) -> bool:
    return kind in ("model.promoted", "model.retired") and data.get("reason") == "shadow"


@dataclass
class Watcher:
    """Reads the streams the daemon writes from where it last stopped."""

    client: redis.Redis
    keys: Keys
    series: Sequence[str]  # "SYMBOL:TF"
    families: Sequence[str]
    tally: Tally = field(default_factory=Tally)
    _last: dict[str, bytes] = field(default_factory=dict)

    def poll(self) -> None:
        for entry in self._new(self.keys.events):
            add_event(self.tally, entry)
        for name in self.series:
            symbol, tf = name.split(":")
            for entry in self._new(self.keys.signals(symbol, tf)):
                add_signal(self.tally, name, entry)
        for family in self.families:
            for entry in self._new(self.keys.trust_events(family)):
                add_trust_update(self.tally, family, entry)

    def _new(self, stream: str) -> Iterable[Mapping[bytes, bytes]]:
        while True:
            start = b"(" + self._last[stream] if stream in self._last else b"-"
            entries: Any = self.client.xrange(stream, min=start, count=READ_COUNT)
            for entry_id, fields in entries:
                self._last[stream] = entry_id
                yield fields
            if len(entries) < READ_COUNT:
                return
