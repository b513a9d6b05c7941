"""How a config section is declared and checked.

A field's type says what TOML value it takes; its constraint rides on the
type as ``Annotated[T, Check(...)]`` (aliases below: ``PositiveFloat``,
``Fraction``...). ``build`` coerces a TOML table into the frozen dataclass,
rejecting unknown keys, wrong types and values that fail their ``Check``
with a ``ConfigError`` naming the key. A type with a ``from_toml(raw, key)``
class method builds and checks itself (``[models.params]``: ``ParamTables``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.domain.timeframes import TIMEFRAME_MS


class Secret(str):
    """A string that never shows itself in ``repr`` or ``str`` formatting of
    the config (logs print ``***``). ``reveal()`` gives the value."""

    def __repr__(self) -> str:
        return "'***'" if self else "''"

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class Check:
    """A constraint on a field's value: ``test`` passes, else the value must be ``what``."""

    test: Callable[[Any], bool]
    what: str


POSITIVE = Check(lambda v: v > 0, "> 0")
NON_NEGATIVE = Check(lambda v: v >= 0, ">= 0")
FRACTION = Check(lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")
PORT = Check(lambda v: 0 <= v <= 65535, "a TCP port (0-65535)")
PROBABILITY = Check(lambda v: 0 <= v <= 1, "a probability in [0, 1]")
TIMEFRAMES = Check(
    lambda v: all(t in TIMEFRAME_MS for t in v), f"timeframes among {list(TIMEFRAME_MS)}"
)

PositiveInt = Annotated[int, POSITIVE]
PositiveFloat = Annotated[float, POSITIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]
NonNegativeFloat = Annotated[float, NON_NEGATIVE]
Fraction = Annotated[float, FRACTION]
Port = Annotated[int, PORT]
Timeframes = Annotated[tuple[str, ...], TIMEFRAMES]


def one_of(names: tuple[str, ...], what: str) -> Check:
    """Every item of a list is among ``names``."""
    return Check(lambda v: all(n in names for n in v), f"{what} among {list(names)}")


def build(cls: type, raw: Any, where: str) -> Any:
    """The ``cls`` section from its TOML table ``raw``, found at ``where``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(raw).__name__}")
    _reject_unknown_keys(cls, raw, where)
    hints = get_type_hints(cls, include_extras=True)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            key = f"{where}.{f.name}" if where else f.name
            values[f.name] = _field_value(key, hints[f.name], raw[f.name])
    return cls(**values)


def _reject_unknown_keys(cls: type, raw: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            place = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown config key {place!r}; known: {sorted(names)}")


def _field_value(key: str, hint: Any, value: Any) -> Any:
    base, checks = _split_annotated(hint)
    if hasattr(base, "from_toml"):  # a type that checks its own table (``ParamTables``)
        return base.from_toml(value, key)
    if dataclasses.is_dataclass(base):
        return build(base, value, key)  # type: ignore[arg-type]
    value = _coerce(key, base, value)
    for check in checks:
        if not check.test(value):
            raise ConfigError(f"config key {key!r} must be {check.what}, got {value!r}")
    return value


def _split_annotated(hint: Any) -> tuple[Any, tuple[Check, ...]]:
    if get_origin(hint) is not Annotated:
        return hint, ()
    base, *extras = get_args(hint)
    return base, tuple(e for e in extras if isinstance(e, Check))


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(
                f"config key {key!r} must be one of {list(get_args(hint))}, got {value!r}"
            )
        return value
    if origin is tuple:
        item = get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} must be a list, got {type(value).__name__}")
        return tuple(_coerce(f"{key}[]", item, v) for v in value)
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"unsupported type for {key!r}")
    return _coerce_scalar(key, hint, value)


def _coerce_scalar(key: str, hint: Any, value: Any) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint in (str, Secret):
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {type(value).__name__}")
        return Secret(value) if hint is Secret else value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key {key!r} must be a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"unsupported type for {key!r}")
