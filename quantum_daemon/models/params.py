"""Hyper-parameters of a model family: a frozen dataclass built from a
(TOML or ``--param``) mapping that rejects unknown keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self


class MappingParams:
    """Mixin for a frozen dataclass of hyper-parameters.

    ``from_mapping`` rejects keys that are not fields, passes each value
    through ``convert`` (a family turns JSON lists into tuples there), and
    builds the dataclass, whose own ``__post_init__`` checks still run."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(names)}")
        return cls(**{key: cls.convert(key, value) for key, value in values.items()})

    @classmethod
    def convert(cls, key: str, value: Any) -> Any:
        """The field's value from the mapping's (JSON-typed) one."""
        return value

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
