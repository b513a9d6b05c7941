"""A family's hyper-parameters: a frozen dataclass whose field types carry
their constraints (``config_schema``: ``PositiveInt``, ``Literal``...), built
from a TOML table or a ``--param`` mapping by ``from_mapping`` (unknown keys,
wrong types and values out of range raise a ``ConfigError`` naming the key),
and a declared search space for the tuner (``Range`` / ``Choices`` per
parameter name).

``evaluation_keys`` are parameters that the training pipeline sets from
``[evaluation]`` (the costs a rule is optimised at must be the costs it is
judged at); an operator cannot set them.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from quantum_daemon.domain.config_schema import build
from quantum_daemon.domain.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """A numeric interval to search; integer fields draw integers. ``log``: a
    log-uniform draw, for scales (learning rates, penalties)."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Choices:
    """A finite set of values to search."""

    values: tuple[Any, ...]


Dimension = Range | Choices
Space = Mapping[str, Dimension]


class MappingParams:
    """Mixin for a frozen dataclass of hyper-parameters (module docstring)."""

    search_space: ClassVar[Space] = {}
    evaluation_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "params") -> Self:
        raw = {key: as_toml(value) for key, value in values.items()}
        names = field_names(cls)
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(
                f"unknown config key {f'{where}.{unknown[0]}'!r} (unknown {cls.__name__} keys "
                f"{unknown}); known: {sorted(names)}"
            )
        try:
            built: Self = build(cls, raw, where)
        except ConfigError:
            raise
        except ValueError as exc:  # a check across fields (``__post_init__``)
            raise ConfigError(f"config key {where!r}: {exc}") from None
        return built

    def as_dict(self) -> dict[str, Any]:
        """The values as JSON and TOML hold them (tuples as lists)."""
        return {f.name: as_toml(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def is_int(cls, name: str) -> bool:
        """Whether field ``name`` holds integers (the tuner draws integers for it)."""
        base = typing.get_type_hints(cls)[name]
        return base is int


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def as_toml(value: Any) -> Any:
    """A value as TOML gives it: tuples become lists (recursively)."""
    if isinstance(value, tuple | list):
        return [as_toml(v) for v in value]
    return value


def contains(dimension: Dimension, value: Any) -> bool:
    """Whether ``value`` lies in ``dimension`` (a default the tuner may start from)."""
    if isinstance(dimension, Choices):
        return value in dimension.values
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return dimension.low <= value <= dimension.high
