"""The judge's rules of issue #13 switched off (each to its off value,
docs/judge.md): for tests about other parts (the registry, the lifecycle's
plumbing, the shadow's bookkeeping, the simulation itself) that need a
version to go live on a short synthetic record."""

from __future__ import annotations

from typing import Any

OLD_RULES: dict[str, Any] = {
    "min_dsr": 0.0,
    "beat_baselines": False,
    "max_ece": 1.0,
    "dm_alpha": 1.0,
}
