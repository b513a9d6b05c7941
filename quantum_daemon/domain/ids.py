"""Model identity: a model is one (family, symbol, timeframe) of ``[models]``.

Its id is ``{family}_{SYMBOL}_{TF}``; a family may itself hold ``_``, so ids
are parsed from the right.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class UnknownModel(KeyError):
    """The model id is not one of the configured models."""


@dataclass(frozen=True, order=True)
class ModelKey:
    family: str
    symbol: str
    tf: str

    @property
    def model_id(self) -> str:
        return model_id(self.family, self.symbol, self.tf)

    @classmethod
    def parse(cls, model_id: str) -> ModelKey:
        """The key of ``{family}_{SYMBOL}_{TF}`` (a family may hold ``_``)."""
        parts = model_id.rsplit("_", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"not a model id (family_SYMBOL_TF): {model_id!r}")
        return cls(*parts)


def model_id(family: str, symbol: str, tf: str) -> str:
    return f"{family}_{symbol}_{tf}"


def model_keys(
    families: Iterable[str], symbols: Iterable[str], timeframes: Iterable[str]
) -> list[ModelKey]:
    """Every configured model, in a stable order."""
    return [ModelKey(f, s, t) for f in families for s in symbols for t in timeframes]
