"""``[training.ray]``: what a Ray job asks of the cluster and may send back.

``num_gpus`` is what a job of a torch family (``nhits``, ``patchtst``) asks
for when ``[training] gpu = "auto"`` and the cluster has GPUs (fractions
share a GPU); ``[training.ray.family_num_gpus]`` sets it per family, any
family, and wins. ``max_version_mb`` bounds the files that travel by value
each way (the active version to the worker, the new version back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quantum_daemon.domain.config_schema import NonNegativeFloat, PositiveFloat
from quantum_daemon.domain.errors import ConfigError


@dataclass(frozen=True)
class FamilyGpus:
    """GPUs per job by family name (``[training.ray.family_num_gpus]``)."""

    by_family: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, raw: Any, where: str) -> FamilyGpus:
        from quantum_daemon.domain.config import FAMILIES

        if not isinstance(raw, dict):
            raise ConfigError(f"[{where}] must be a table, got {type(raw).__name__}")
        for name, value in raw.items():
            if name not in FAMILIES:
                raise ConfigError(
                    f"config key '{where}.{name}' must name a family among {list(FAMILIES)}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(
                    f"config key '{where}.{name}' must be a number >= 0, got {value!r}"
                )
        return cls({name: float(value) for name, value in raw.items()})

    def get(self, family: str) -> float | None:
        return self.by_family.get(family)


@dataclass(frozen=True)
class RayTrainingConfig:
    num_gpus: NonNegativeFloat = 1.0
    family_num_gpus: FamilyGpus = field(default_factory=FamilyGpus)
    max_version_mb: PositiveFloat = 64.0
