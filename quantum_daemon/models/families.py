"""Family names to classes, imported lazily (the daemon process never imports
xgboost, lightgbm or torch: only a worker that asks for a family does).

Adding a family is one entry in ``_FAMILY_MODULES``: name -> (module, class).

``family_class`` is the family's own class (raw ``p_up``); what the daemon
and the CLI train and load is ``calibrated_family``: the same family with its
``p_up`` calibrated on the validation window (``models.calibrated``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantum_daemon.models.base import Family

_FAMILY_MODULES: dict[str, tuple[str, str]] = {
    "xgb": ("quantum_daemon.models.xgb", "XGBFamily"),
    "lgbm": ("quantum_daemon.models.lgbm", "LGBMFamily"),
    "nhits": ("quantum_daemon.models.neural", "NHiTSFamily"),
    "patchtst": ("quantum_daemon.models.neural", "PatchTSTFamily"),
    "evo_model": ("quantum_daemon.models.evo", "EvoFamily"),
    "rl_sizer": ("quantum_daemon.models.rl_sizer", "RlSizerFamily"),
}


class UnknownFamily(ValueError):
    """A family name without an implementation."""


def family_names() -> tuple[str, ...]:
    return tuple(_FAMILY_MODULES)


def family_class(name: str) -> type[Family]:
    """The class of family ``name``, importing its module on first use."""
    try:
        module_name, class_name = _FAMILY_MODULES[name]
    except KeyError:
        raise UnknownFamily(f"unknown family {name!r}; known: {list(_FAMILY_MODULES)}") from None
    cls: type[Family] = getattr(importlib.import_module(module_name), class_name)
    return cls


def calibrated_family(name: str) -> type[Family]:
    """Family ``name`` with ``p_up`` calibrated on its validation window; same ``name``."""
    from quantum_daemon.models.calibrated import calibrated_class

    return calibrated_class(family_class(name))


def load_model(directory: Path) -> tuple[Family, Mapping[str, Any]]:
    """Verify a version folder's checksums, then rebuild its fitted model."""
    from quantum_daemon.artifacts import load_version

    version = load_version(directory)
    cls = calibrated_family(version.metadata["family"])
    return cls.load(version.path, version.metadata), version.metadata
