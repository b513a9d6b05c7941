"""The demo's text: the banner, the live summary and the last summary."""

from __future__ import annotations

import textwrap
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantum_daemon.core.ensemble import Signal
from quantum_daemon_dev.demo.tally import SeriesSignals, Tally

RULE = "=" * 78
INDENT = " " * 12


@dataclass(frozen=True)
class Snapshot:
    """The daemon's HTTP answers of one refresh (empty where one failed)."""

    status: Mapping[str, Any]
    models: Sequence[Mapping[str, Any]]


def banner(base: str, settings: Sequence[str], config: str, log: str) -> str:
    lines = [
        RULE,
        f"  dashboard:  {base}/dashboard",
        f"  API base:   {base}/api   (status, models, jobs, trust, signals, events)",
        f"  metrics:    {base}/metrics",
        f"  config:     {config}    daemon log: {log}",
        RULE,
    ]
    if settings:
        lines.append("demo settings (differ from config.toml; the judge's rules are real):")
        lines += [f"  {s}" for s in settings]
        lines.append(RULE)
    return "\n".join(lines)


def header(base: str, settings: Sequence[str], width: int) -> str:
    """The banner in a few lines, above each redraw of the summary on a terminal."""
    lines = [f"dashboard {base}/dashboard   API {base}/api   Ctrl-C: stop and sum up"]
    if settings:
        short = "; ".join(s.split(" (config.toml")[0] for s in settings)
        lines += textwrap.wrap(f"demo settings: {short}", width, subsequent_indent="  ")
    return "\n".join(lines)


def live_summary(tally: Tally, snap: Snapshot, feed: str, shadow_min_bars: int) -> str:
    elapsed = time.monotonic() - tally.started
    head = f"--- {time.strftime('%H:%M:%S')}  +{elapsed:.0f}s  {feed} "
    lines = [head + "-" * max(0, 78 - len(head))]
    lines += _daemon_lines(snap)
    lines += _model_lines(snap.models)
    lines += _section("judge", list(tally.verdicts)[-4:], "no version judged yet")
    lines += _signal_lines(tally)
    lines += _trust_lines(tally, snap)
    waiting = (
        f"none yet (a candidate needs {shadow_min_bars} scored bars in common "
        "with an active version to be judged)"
    )
    lines += _section("shadow", list(tally.shadow_verdicts)[-3:], waiting)
    lines += _section("events", list(tally.recent)[-5:], "none yet")
    return "\n".join(lines)


def _daemon_lines(snap: Snapshot) -> list[str]:
    status = snap.status
    if not status:
        return ["daemon      API not answering"]
    ingest = (status.get("ingest") or {}).get("totals") or {}
    lifecycle = (status.get("lifecycle") or {}).get("summary", "")
    return [
        f"bars        {ingest.get('inserted', 0):,} stored, {ingest.get('duplicates', 0):,} "
        f"duplicates, {ingest.get('rejected', 0):,} dead-lettered",
        f"training    {lifecycle}",
    ]


def _model_lines(models: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for model in sorted(models, key=lambda m: str(m.get("model_id"))):
        stages = Counter(str(v.get("stage")) for v in model.get("versions", ()))
        active = model.get("active")
        counts = ", ".join(f"{n} {stage}" for stage, n in sorted(stages.items()))
        rows.append(f"{model.get('model_id')!s:<22} active {active or '-':<17} {counts}")
    return _section("models", rows, "none trained yet")


def _signal_lines(tally: Tally) -> list[str]:
    rows = [
        f"{name:<11} {s.published:>4} ({_statuses(s)}); latest: {_signal_text(s.latest)}"
        for name, s in sorted(tally.signals.items())
    ]
    return _section("signals", rows, "none yet (the first comes once the models are loaded)")


def _statuses(s: SeriesSignals) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(s.by_status.items()))


def _signal_text(signal: Signal | None) -> str:
    if signal is None:
        return "-"
    text = f"{signal.status}, position {signal.position:+.2f}, p_up {signal.p_up:.3f}"
    if signal.reason:
        text += f" ({signal.reason})"
    return text


def _trust_lines(tally: Tally, snap: Snapshot) -> list[str]:
    live = list((snap.status.get("inference") or {}).get("live_families") or ())
    rows = [
        f"{family:<10} {t.first_weight:.3f} -> {t.weight:.3f}  ({t.updates} updates, "
        f"last loss {t.last_loss:.3f})"
        for family, t in sorted(tally.trust.items())
        if t.first_weight is not None and t.weight is not None and t.last_loss is not None
    ]
    if rows and len(live) == 1:
        rows.append(f"one family live ({live[0]}): its weight is 1 until a second one is active")
    return _section("trust", rows, "no update yet (trust moves once an active model is scored)")


def _section(title: str, rows: Sequence[str], empty: str) -> list[str]:
    rows = rows or [empty]
    return [f"{title:<11} {rows[0]}"] + [f"{INDENT}{row}" for row in rows[1:]]


def final_summary(tally: Tally, seconds: float, tail_bars: int) -> str:
    """The counts of the whole run."""
    first, events = tally.first_seen, tally.events
    live = sum(s.by_status["live"] for s in tally.signals.values())
    moved = sum(1 for t in tally.trust.values() if t.weight != t.first_weight)
    rows = [
        ("signals published", tally.signals_published, _per_series(tally), "signal"),
        ("live signals", live, "", "signal live"),
        ("trust updates", tally.trust_updates, _per_family(tally), "trust update"),
        ("weights moved", moved, "(families whose trust weight changed)", "trust weight moved"),
        ("versions trained", events["training.completed"], "", "training.completed"),
        ("training failed", events["training.failed"], "", ""),
        ("versions rejected", events["model.rejected"], _counts(tally.rejected_by_gate), ""),
        ("versions promoted", events["model.promoted"], _counts(tally.promoted_by_reason), ""),
        ("versions retired", events["model.retired"], _counts(tally.retired_by_reason), ""),
        ("shadow verdicts", tally.shadow_verdict_count, "", "shadow verdict"),
    ]
    lines = [RULE, f"summary after {seconds:.0f} s ({tail_bars} live bars published per series)"]
    lines += [_count_line(label, n, detail, _at(first, what)) for label, n, detail, what in rows]
    return "\n".join([*lines, RULE])


def _count_line(label: str, n: int, detail: str, first: str) -> str:
    return f"  {label + ':':<20} {n}" + (f" {detail}" if detail else "") + first


def _per_series(tally: Tally) -> str:
    return _counts(Counter({name: s.published for name, s in tally.signals.items()}))


def _per_family(tally: Tally) -> str:
    parts = [
        f"{family} {t.updates}, weight {t.first_weight:.3f} -> {t.weight:.3f}"
        for family, t in sorted(tally.trust.items())
        if t.first_weight is not None and t.weight is not None
    ]
    return f"({'; '.join(parts)})" if parts else ""


def _counts(counter: Counter[str]) -> str:
    if not counter:
        return ""
    return "(" + ", ".join(f"{key}: {n}" for key, n in sorted(counter.items())) + ")"


def _at(first: Mapping[str, float], what: str) -> str:
    return f", first at +{first[what]:.0f}s" if what in first else ""
