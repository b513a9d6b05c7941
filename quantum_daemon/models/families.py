"""Family names to classes, imported lazily (the daemon process never imports
xgboost, lightgbm or torch: only a worker that asks for a family does).

Adding a family is one entry in ``_FAMILY_MODULES``: name -> (module, class).

``family_class`` is the family's own class (raw ``p_up``); what the daemon
and the CLI train and load is ``calibrated_family``: the same family with its
``p_up`` calibrated on the validation window (``models.calibrated``).

A family that sizes the ensemble signal (``domain.families.SIZER_FAMILIES``:
``rl_sizer``) takes the signal from the daemon's recorded signals when a job
has them: ``training_family(name, signals)`` makes such models for the
walk-forward evaluation, ``load_model(directory, signals)`` loads one for the
head-to-head, so both versions there size the same signal. Without signals
both are exactly ``calibrated_family(name)``. A version of a multi-symbol
model (metadata ``symbol`` = ``multi``) loads as ``models.multi.multi_family(name)``.

A family that reads context features (``xgb``, ``lgbm``: ``use_context``)
takes a ``FeatureContext`` the same way: ``training_family(name, signals,
context)`` fits with it, ``load_model(directory, signals, context)`` gives a
loaded version the reference bars it predicts with. Other families ignore it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.ids import MULTI_SYMBOL
from quantum_daemon.domain.signals import RecordedSignals
from quantum_daemon.models.base import Family

if TYPE_CHECKING:
    from quantum_daemon.core.context_features import FeatureContext

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


def training_family(
    name: str, signals: RecordedSignals | None = None, context: FeatureContext | None = None
) -> Callable[[], Family]:
    """What a training job fits: ``calibrated_family(name)``, sizing ``signals``
    where the family consumes the ensemble signal and signals are given,
    with context features where the family reads them and a context is given."""
    cls = calibrated_family(name)
    signals = signals if name in SIZER_FAMILIES else None
    if signals is None and context is None:
        return cls
    return functools.partial(_new_with, cls, signals, context)


def load_model(
    directory: Path,
    signals: RecordedSignals | None = None,
    context: FeatureContext | None = None,
) -> tuple[Family, Mapping[str, Any]]:
    """Verify a version folder's checksums, then rebuild its fitted model
    (sizing ``signals``, reading ``context``'s reference bars, as
    ``training_family`` does)."""
    from quantum_daemon.storage.artifacts import load_version

    version = load_version(directory)
    name = version.metadata["family"]
    if version.metadata.get("symbol") == MULTI_SYMBOL:  # a global model (``models.multi``)
        from quantum_daemon.models.multi import multi_family

        multi = multi_family(name).load(version.path, version.metadata)
        return cast(Family, multi), version.metadata  # it answers as a Family does
    model = calibrated_family(name).load(version.path, version.metadata)
    if signals is not None and name in SIZER_FAMILIES:
        _use_signals(model, signals)
    if context is not None:
        use_context(model, context)
    return model, version.metadata


def use_context(model: Any, context: FeatureContext) -> None:
    """Hand a model its context (no-op for a family without context features)."""
    if hasattr(model, "use_context"):
        model.use_context(context)


def reference_symbols(model: Any) -> tuple[str, ...]:
    """The symbols whose bars a loaded model needs to predict (none: no context)."""
    return tuple(getattr(model, "reference_symbols", ()))


def _new_with(
    cls: type[Family], signals: RecordedSignals | None, context: FeatureContext | None
) -> Family:
    model = cls()
    if signals is not None:
        _use_signals(model, signals)
    if context is not None:
        use_context(model, context)
    return model


def _use_signals(model: Family, signals: RecordedSignals) -> None:
    # The calibrated wrapper hands ``use_signals`` to the inner family.
    cast(Any, model).use_signals(signals)
