"""The head-to-head of a multi-symbol version with its model's active version.

Per symbol, both versions answer on that symbol's unseen decisions of the
new version's last test window (``jobs.common_unseen_decisions`` on the
symbol's own bars and windows, from the metadata's ``per_symbol``); the
comparison is the mean over symbols of each version's Sharpe and total
return after costs, over the symbols both versions answer for. A symbol the
active version was not fitted on is left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantum_daemon.core.promotion import HeadToHead
from quantum_daemon.training.jobs import TrainJobSpec, _score, common_unseen_decisions


def head_to_head_multi(spec: TrainJobSpec, new_dir: Path) -> HeadToHead:
    from quantum_daemon.models.families import load_model
    from quantum_daemon.storage.artifacts import ArtifactCorrupt

    assert spec.active is not None
    try:
        active, active_meta = load_model(Path(spec.active.path))
    except ArtifactCorrupt as exc:
        return HeadToHead(spec.active.version, 0, None, None, 0.0, 0.0, refused=str(exc))
    new, new_meta = load_model(new_dir)
    known = set(getattr(active, "symbols", ()))
    scores: list[tuple[float, float, float, float]] = []
    n, first, last = 0, None, None
    for bars in spec.series:
        if bars.symbol not in known:
            continue
        one = dataclasses.replace(spec, bars=bars, series=())
        idx = common_unseen_decisions(
            one, _symbol_meta(new_meta, bars.symbol), _symbol_meta(active_meta, bars.symbol)
        )
        if idx.size == 0:
            continue
        scores.append((*_score(one, new, idx), *_score(one, active, idx)))
        n += int(idx.size)
        first = _earliest(first, int(bars.ts[idx[0]]))
        last = max(last or 0, int(bars.ts[idx[-1]]))
    if not scores:
        return HeadToHead(spec.active.version, 0, None, None, 0.0, 0.0)
    mean = [sum(s[i] for s in scores) / len(scores) for i in range(4)]
    return HeadToHead(
        active_version=spec.active.version,
        n_decisions=n,
        first_ts=first,
        last_ts=last,
        new_sharpe=mean[0],
        active_sharpe=mean[2],
        new_total_return=mean[1],
        active_total_return=mean[3],
    )


def _symbol_meta(meta: Mapping[str, Any], symbol: str) -> dict[str, Any]:
    """The metadata as a single-symbol version of ``symbol`` would hold it."""
    own = meta.get("per_symbol", {}).get(symbol, {})
    return {**meta, "data_window": own.get("data_window", meta["data_window"])}


def _earliest(current: int | None, ts: int) -> int:
    return ts if current is None else min(current, ts)
