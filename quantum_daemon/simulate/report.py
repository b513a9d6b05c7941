"""The report folder of a simulation: ``summary.json``, ``signals.csv``,
``timeline.csv``, ``variant_returns.csv`` (each variant's net return per bar)
and ``report.html`` (one self-contained page, inline SVG).

``summary.json`` holds only what the bars, the config and the seed decide
(no wall time, no path), so the same inputs give the same bytes; timings go
to ``run.json``.
"""

from __future__ import annotations

import csv
import html
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from quantum_daemon.simulate.engine import Simulation
from quantum_daemon.simulate.intervals import interval_stats, interval_summary
from quantum_daemon.simulate.records import ACTIVE
from quantum_daemon.simulate.variants import VariantResult

SIGNAL_FIELDS = (
    "ts", "symbol", "tf", "mu", "p_up", "position", "position_source", "plain_position",
    "contributions", "versions", "status", "reason", "shadow", "q05", "q50", "q95",
)  # fmt: skip
TIMELINE_FIELDS = ("time", "ts", "event", "model_id", "version", "detail")
VARIANT_RETURNS_FILE = "variant_returns.csv"
VARIANT_RETURNS_FIELDS = ("variant", "trial", "hindsight", "ts", "net")


def write_report(
    out: Path,
    sim: Simulation,
    results: Sequence[VariantResult],
    summary: Mapping[str, Any],
    run_info: Mapping[str, Any],
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "partial": sim.partial,
        "span": _span(sim),
        "tf": sim.tf,
        "symbols": sorted(k[0] for k in sim.series),
        "families": list(sim.families),
        "costs_bps": sim.cfg.evaluation.fee_bps + sim.cfg.evaluation.slippage_bps,
        **summary,
        **_with_intervals(model_stats(sim), sim),
    }
    (out / "summary.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    (out / "run.json").write_text(json.dumps(dict(run_info), indent=2, sort_keys=True) + "\n")
    write_signals(out / "signals.csv", sim)
    write_timeline(out / "timeline.csv", sim)
    write_variant_returns(out / VARIANT_RETURNS_FILE, results)
    (out / "report.html").write_text(render_html(document, sim, results), encoding="utf-8")
    return document


def _span(sim: Simulation) -> dict[str, Any]:
    records = [r for rs in sim.bars.values() for r in rs]
    if not records:
        return {"first_ts": None, "last_ts": None, "bars": 0}
    return {
        "first": _iso(min(r.ts for r in records)),
        "last": _iso(max(r.ts for r in records)),
        "bars": len(records),
    }


def model_stats(sim: Simulation) -> dict[str, Any]:
    """Per model: versions trained, promoted, rejected by gate, bars live."""
    out: dict[str, Any] = {}
    active_bars: Counter[str] = Counter()
    shadow_bars: Counter[str] = Counter()
    for records in sim.bars.values():
        for r in records:
            for (model_id, _), (stage, _) in r.forecasts.items():
                (active_bars if stage == ACTIVE else shadow_bars)[model_id] += 1
    events: dict[str, Counter[str]] = defaultdict(Counter)
    gates: dict[str, Counter[str]] = defaultdict(Counter)
    for e in sim.timeline:
        events[e.model_id][e.kind] += 1
        if e.kind == "rejected":
            gates[e.model_id][e.detail or "unknown"] += 1
    for key in sim.keys:
        mid = key.model_id
        out[mid] = {
            "family": key.family,
            "symbol": key.symbol,
            "trained": events[mid]["trained"],
            "training_failed": events[mid]["training_failed"],
            "promoted": events[mid]["promoted"],
            "rejected": events[mid]["rejected"],
            "rejected_by_gate": dict(sorted(gates[mid].items())),
            "retired": events[mid]["retired"],
            "bars_active": active_bars[mid],
            "bars_in_shadow": shadow_bars[mid],
            "drifts": events[mid]["drift_detected"],
            "record_rule": sim.record_rule(mid).detail,  # at the end of the span
        }
    return out


def _with_intervals(models: dict[str, Any], sim: Simulation) -> dict[str, Any]:
    """``models`` with each model's out-of-sample interval record
    (``interval_n``, ``coverage_90``, ``pinball``), and ``intervals`` per family."""
    bars_of = {symbol: s.bars for (symbol, _), s in sim.series.items()}
    # a multi version is scored on each of its series' views (symbol ``multi`` has no bars)
    records = [*sim.versions.values(), *sim.views.values()]
    per_model, per_family = interval_stats(records, bars_of)
    empty = interval_summary(np.zeros(0), np.zeros((0, 3)))
    for mid, stats in models.items():
        found = per_model.get(mid, empty)
        stats.update(interval_n=found["n"], coverage_90=found["coverage_90"],
                     pinball=found["pinball"])  # fmt: skip
    return {"models": models, "intervals": per_family}


def write_signals(path: Path, sim: Simulation) -> None:
    """The published signal per bar: the fields of ``quantum:signals:{S}:{TF}`` plus ``ts``."""
    rows = [r.signal for records in sim.bars.values() for r in records if r.signal]
    rows.sort(key=lambda s: (s["ts"], s["symbol"]))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SIGNAL_FIELDS)
        for s in rows:
            writer.writerow([_cell(s.get(k)) for k in SIGNAL_FIELDS])


def write_timeline(path: Path, sim: Simulation) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TIMELINE_FIELDS)
        for e in sim.timeline:
            writer.writerow([_iso(e.ts), e.ts, e.kind, e.model_id, e.version, e.detail])


def write_variant_returns(path: Path, results: Sequence[VariantResult]) -> None:
    """Every variant's portfolio net return per bar, the series its figures
    (and a deflated Sharpe over several runs' trials) are computed from."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(VARIANT_RETURNS_FIELDS)
        for r in results:
            for ts, net in zip(r.ts.tolist(), r.net.tolist(), strict=True):
                writer.writerow([r.name, int(r.trial), int(r.hindsight), int(ts), repr(float(net))])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the page ----------------------------------------------------------------------

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#17becf", "#7f7f7f", "#bcbd22")  # fmt: skip


def render_html(
    document: Mapping[str, Any], sim: Simulation, results: Sequence[VariantResult]
) -> str:
    title = "quantum-daemon simulate: " + ", ".join(document["symbols"]) + f" {document['tf']}"
    equity = {r.name: _equity(r.net) for r in results}
    drawdown = {r.name: _drawdown(r.net) for r in results}
    ts = next((r.ts for r in results if len(r.ts)), np.zeros(0, np.int64))
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        _banner(document),
        "<h2>Variants (after costs)</h2>",
        _table(document["variants"]),
        "<h2>Equity</h2>",
        _svg_lines("equity", ts, equity, log=False),
        "<h2>Drawdown</h2>",
        _svg_lines("drawdown", ts, drawdown, log=False),
        "<h2>Trust weights</h2>",
        _trust_svg(sim),
        "<h2>Promotion timeline</h2>",
        _timeline_svg(sim),
        "<h2>Models</h2>",
        _models_table(document["models"]),
    ]
    return PAGE.format(title=html.escape(title), body="\n".join(parts))


def _banner(document: Mapping[str, Any]) -> str:
    span = document["span"]
    partial = "<p class='partial'>PARTIAL: stopped before the end of the span</p>"
    return (
        (partial if document["partial"] else "")
        + f"<p>{html.escape(str(span.get('first')))} to {html.escape(str(span.get('last')))}, "
        f"costs {document['costs_bps']} bps per change of position; deflated Sharpe with "
        f"n_trials = {document['n_trials']} (the variants judged in this run).</p>"
    )


def _table(variants: Mapping[str, Mapping[str, Any]]) -> str:
    cols = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "dsr", "trades",
            "turnover", "exposure")  # fmt: skip
    head = "".join(f"<th>{c}</th>" for c in ("variant", *cols))
    rows = []
    for name, v in variants.items():
        mark = " (hindsight)" if v.get("hindsight") else ""
        cells = "".join(f"<td>{_fmt(v.get(c))}</td>" for c in cols)
        rows.append(f"<tr><td>{html.escape(name + mark)}</td>{cells}</tr>")
    return f"<table id='variants'><tr>{head}</tr>{''.join(rows)}</table>"


def _models_table(models: Mapping[str, Mapping[str, Any]]) -> str:
    cols = ("trained", "promoted", "rejected", "retired", "bars_active", "bars_in_shadow",
            "coverage_90", "pinball")  # fmt: skip
    head = "".join(f"<th>{c}</th>" for c in ("model", *cols, "rejected_by_gate"))
    rows = []
    for mid, m in models.items():
        cells = "".join(f"<td>{_fmt(m.get(c))}</td>" for c in cols)
        gates = html.escape(json.dumps(m["rejected_by_gate"]))
        rows.append(f"<tr><td>{html.escape(mid)}</td>{cells}<td>{gates}</td></tr>")
    return f"<table id='models'><tr>{head}</tr>{''.join(rows)}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "n/a" if value is None else html.escape(str(value))


def _equity(net: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 + net) if len(net) else net


def _drawdown(net: np.ndarray) -> np.ndarray:
    eq = _equity(net)
    return eq / np.maximum.accumulate(eq) - 1.0 if len(eq) else eq


W, H, PAD = 900, 260, 40


def _svg_lines(name: str, ts: np.ndarray, series: Mapping[str, np.ndarray], log: bool) -> str:
    values = [v for v in series.values() if len(v)]
    if not values or len(ts) < 2:
        return (
            f"<svg id='{name}' class='plot' width='{W}' height='{PAD}'>"
            "<text x='2' y='20'>no data</text></svg>"
        )
    lo = min(float(np.min(v)) for v in values)
    hi = max(float(np.max(v)) for v in values)
    hi = hi if hi > lo else lo + 1.0
    lines, legend = [], []
    for n, (label, v) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        step = max(1, len(v) // 1500)
        pts = " ".join(
            f"{PAD + (W - 2 * PAD) * k / max(len(v) - 1, 1):.1f},"
            f"{H - PAD - (H - 2 * PAD) * (float(v[k]) - lo) / (hi - lo):.1f}"
            for k in range(0, len(v), step)
        )
        lines.append(f"<polyline class='line' fill='none' stroke='{color}' points='{pts}'/>")
        legend.append(f"<span style='color:{color}'>&#9632; {html.escape(label)}</span>")
    axis = (
        f"<text x='2' y='{PAD}'>{hi:.3g}</text><text x='2' y='{H - PAD}'>{lo:.3g}</text>"
        f"<text x='{PAD}' y='{H - 8}'>{_iso(int(ts[0]))[:10]}</text>"
        f"<text x='{W - PAD - 70}' y='{H - 8}'>{_iso(int(ts[-1]))[:10]}</text>"
    )
    return (
        f"<svg id='{name}' class='plot' width='{W}' height='{H}' viewBox='0 0 {W} {H}'>"
        f"{axis}{''.join(lines)}</svg><div class='legend'>{' '.join(legend)}</div>"
    )


def _trust_svg(sim: Simulation) -> str:
    history = list(sim.trust_history)
    if history and sim.now_ms > history[-1][0]:
        history.append((sim.now_ms, history[-1][1]))  # the weights held to the end
    families = sorted({f for _, w in history for f in w})
    ts = np.array([t for t, _ in history], dtype=np.int64)
    series = {f: np.array([w.get(f, 0.0) for _, w in history]) for f in families}
    return _svg_lines("trust", ts, series, log=False)


def _timeline_svg(sim: Simulation) -> str:
    kinds = {"trained": "#7f7f7f", "promoted": "#2ca02c", "rejected": "#d62728",
             "retired": "#ff7f0e", "training_failed": "#000000",
             "drift_detected": "#9467bd"}  # fmt: skip
    events = [e for e in sim.timeline if e.kind in kinds]
    models = [k.model_id for k in sim.keys]
    if not events or not models:
        return "<p>no event</p>"
    t0, t1 = min(e.ts for e in events), max(e.ts for e in events)
    span = max(t1 - t0, 1)
    row = 18
    height = PAD + row * len(models)
    marks = []
    for e in events:
        if e.model_id not in models:
            continue
        x = PAD + 140 + (W - 2 * PAD - 140) * (e.ts - t0) / span
        y = PAD / 2 + row * models.index(e.model_id)
        tip = html.escape(f"{_iso(e.ts)} {e.kind} {e.version} {e.detail}")
        marks.append(
            f"<circle class='event' cx='{x:.1f}' cy='{y + 6:.1f}' r='4' "
            f"fill='{kinds[e.kind]}'><title>{tip}</title></circle>"
        )
    labels = "".join(
        f"<text x='2' y='{PAD / 2 + row * n + 10:.1f}'>{html.escape(m)}</text>"
        for n, m in enumerate(models)
    )
    legend = " ".join(f"<span style='color:{c}'>&#9679; {k}</span>" for k, c in kinds.items())
    return (
        f"<svg id='timeline' class='plot' width='{W}' height='{height}' "
        f"viewBox='0 0 {W} {height}'>{labels}{''.join(marks)}</svg>"
        f"<div class='legend'>{legend}</div>"
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child {{ text-align: left; }}
svg text {{ font-size: 11px; fill: #555; }}
.partial {{ color: #b00; font-weight: bold; }}
.legend span {{ margin-right: 1em; }}
</style></head>
<body>
{body}
</body></html>
"""
