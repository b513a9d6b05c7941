"""How well each simulated model's forecast intervals held, out of sample.

Every version forecasts only bars after its training (``live_from``); for
each such forecast with intervals whose horizon came within the data, the
outcome ``log(close[t+h] / close[t])`` is checked against ``[q05, q95]``
and the three quantiles are scored by the pinball loss. Per model and per
family: the number of forecasts scored, the empirical coverage of the 90 %
interval and the mean pinball loss (``summary.json``'s ``models`` and
``intervals``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from quantum_daemon.core.conformal import LEVELS, NOMINAL_COVERAGE, interval_coverage, mean_pinball
from quantum_daemon.domain.bars import Bars
from quantum_daemon.simulate.records import VersionRecord


def scored_forecasts(record: VersionRecord, bars: Bars) -> tuple[np.ndarray, np.ndarray]:
    """(outcomes, quantile rows) of the version's forecasts with intervals
    and a known outcome."""
    idx = [
        i
        for i, p in record.predictions.items()
        if p.quantiles is not None and i + record.horizon < len(bars)
    ]
    if not idx:
        return np.zeros(0), np.zeros((0, len(LEVELS)))
    at = np.array(sorted(idx), dtype=np.int64)
    outcome = np.log(bars.close[at + record.horizon] / bars.close[at])
    quantiles = np.array([record.predictions[int(i)].quantiles for i in at], dtype=np.float64)
    return outcome, quantiles


def interval_summary(outcome: np.ndarray, quantiles: np.ndarray) -> dict[str, Any]:
    if len(outcome) == 0:
        return {"n": 0, "coverage_90": None, "pinball": None}
    return {
        "n": len(outcome),
        "coverage_90": interval_coverage(outcome, quantiles[:, 0], quantiles[:, 2]),
        "pinball": mean_pinball(outcome, quantiles, LEVELS),
    }


def interval_stats(
    versions: Iterable[VersionRecord], bars_of: Mapping[str, Bars]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(per model, per family) interval summaries; ``bars_of``: symbol -> its bars."""
    by_model: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    family_of: dict[str, str] = {}
    for record in versions:
        if record.symbol in bars_of:
            by_model[record.model_id].append(scored_forecasts(record, bars_of[record.symbol]))
            family_of[record.model_id] = record.family
    models = {mid: interval_summary(*_joined(parts)) for mid, parts in by_model.items()}
    by_family: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for mid, parts in by_model.items():
        by_family[family_of[mid]].extend(parts)
    families = {
        f: {**interval_summary(*_joined(parts)), "nominal": NOMINAL_COVERAGE}
        for f, parts in sorted(by_family.items())
    }
    return models, families


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0), np.zeros((0, len(LEVELS)))
    return np.concatenate([o for o, _ in parts]), np.concatenate([q for _, q in parts])
