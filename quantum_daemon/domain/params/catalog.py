"""Every family's parameters class, and ``[models.params]``: the per-family
and per-model tables of config.toml, each checked by its family's class.

A table is named by a family (``[models.params.lgbm]``) or by a model id
(``[models.params."lgbm_ETHUSDT_1h"]``); a model's parameters are its
family's table with its own table's keys on top (``for_model``). Besides the
family's own keys every table may set ``calibration`` (how ``p_up`` is
calibrated on the validation window: ``models.calibrated``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.domain.ids import BadIdentifier, ModelKey, check_model_id
from quantum_daemon.domain.params.base import MappingParams, as_toml
from quantum_daemon.domain.params.neural import NHiTSParams, PatchTSTParams
from quantum_daemon.domain.params.rules import EvoParams, SizerParams
from quantum_daemon.domain.params.trees import LGBMParams, XGBParams

FAMILY_PARAMS: dict[str, type[MappingParams]] = {
    "xgb": XGBParams,
    "lgbm": LGBMParams,
    "nhits": NHiTSParams,
    "patchtst": PatchTSTParams,
    "evo_model": EvoParams,
    "rl_sizer": SizerParams,
}
CALIBRATION_KEY = "calibration"
# as core.calibration.Method (tests/test_params.py checks that they agree)
CALIBRATION_METHODS = ("identity", "platt", "isotonic")


def params_class(family: str) -> type[MappingParams]:
    try:
        return FAMILY_PARAMS[family]
    except KeyError:
        raise ConfigError(f"unknown family {family!r}; known: {list(FAMILY_PARAMS)}") from None


def checked(family: str, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` as TOML gives them, after ``family``'s class accepted them
    (``calibration`` beside them). Raises ``ConfigError`` naming the key."""
    own = {k: as_toml(v) for k, v in values.items() if k != CALIBRATION_KEY}
    params_class(family).from_mapping(own, where)
    if CALIBRATION_KEY in values and values[CALIBRATION_KEY] not in CALIBRATION_METHODS:
        raise ConfigError(
            f"config key '{where}.{CALIBRATION_KEY}' must be one of {list(CALIBRATION_METHODS)}, "
            f"got {values[CALIBRATION_KEY]!r}"
        )
    if CALIBRATION_KEY in values:
        own[CALIBRATION_KEY] = values[CALIBRATION_KEY]
    return own


def refuse_evaluation_keys(family: str, table: Mapping[str, Any], where: str) -> None:
    for key in sorted(set(table) & params_class(family).evaluation_keys):
        raise ConfigError(
            f"config key '{where}.{key}' is not a parameter to set: {family} trains at the "
            f"costs it is judged at, [evaluation] {key}"
        )


def _family_of(name: str, where: str) -> str:
    if name in FAMILY_PARAMS:
        return name
    try:
        check_model_id(name)
    except (BadIdentifier, ValueError):
        raise ConfigError(
            f"config key '{where}': a table of [models.params] is named by a family "
            f'({list(FAMILY_PARAMS)}) or a model id such as "lgbm_ETHUSDT_1h"'
        ) from None
    family = ModelKey.parse(name).family
    if family not in FAMILY_PARAMS:
        raise ConfigError(f"config key '{where}': unknown family {family!r} in the model id")
    return family


@dataclass(frozen=True)
class ParamTables:
    """``[models.params]``: checked tables by family and by model id."""

    families: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)

    @classmethod
    def from_toml(cls, raw: Any, where: str) -> ParamTables:
        if not isinstance(raw, dict):
            raise ConfigError(f"[{where}] must be a table, got {type(raw).__name__}")
        families: dict[str, dict[str, Any]] = {}
        models: dict[str, dict[str, Any]] = {}
        for name, table in raw.items():
            at = f"{where}.{name}"
            if not isinstance(table, dict):
                raise ConfigError(f"[{at}] must be a table, got {type(table).__name__}")
            family = _family_of(name, at)
            refuse_evaluation_keys(family, table, at)
            (families if name == family else models)[name] = checked(family, table, at)
        tables = cls(families, models)
        for model_id in models:  # keys of both tables together must still make sense
            family = ModelKey.parse(model_id).family
            checked(family, tables.for_model(family, model_id), f"{where}.{model_id}")
        return tables

    def for_model(self, family: str, model_id: str) -> dict[str, Any]:
        """The parameters of ``model_id``: its family's table, its own on top."""
        return {**self.families.get(family, {}), **self.models.get(model_id, {})}

    def to_toml(self) -> dict[str, Any]:
        tables = {**self.families, **self.models}
        return {name: dict(table) for name, table in tables.items()}

    def __repr__(self) -> str:
        return repr(self.to_toml())
