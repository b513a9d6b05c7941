"""``[models.multi]``: the global models, one model over several symbols.

A key is ``{family}_{TF}``, its value the symbols the model trains on and
answers for::

    [models.multi]
    lgbm_1h = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

gives the model ``lgbm_multi_1h`` (docs/families.md, "Global models"). Only
the forecasting families that can pool series train as multi: the tree
families (the symbol as a categorical feature) and the torch families
(channel-independent windows of every symbol). ``evo_model`` and
``rl_sizer`` stay single-symbol: their state (a rule's parameters, a sizing
policy's book) is a strategy of one market. Every check raises
``ConfigError`` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.domain.ids import (
    MULTI_SYMBOL,
    BadIdentifier,
    ModelKey,
    check_symbol,
    check_timeframe,
    model_id,
)

MULTI_FAMILIES = ("xgb", "lgbm", "nhits", "patchtst")
SINGLE_ONLY_FAMILIES = ("evo_model", "rl_sizer")
MIN_SYMBOLS = 2


@dataclass(frozen=True)
class MultiModels:
    """The checked table: model id -> its symbols, in the order given."""

    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @classmethod
    def from_toml(cls, raw: Any, where: str) -> MultiModels:
        if not isinstance(raw, dict):
            raise ConfigError(f"[{where}] must be a table, got {type(raw).__name__}")
        models: dict[str, tuple[str, ...]] = {}
        for name, symbols in raw.items():
            key = _key_of(name, f"{where}.{name}")
            models[key.model_id] = _symbols_of(symbols, f"{where}.{name}")
        return cls(models)

    def keys(self) -> list[ModelKey]:
        return [ModelKey.parse(mid) for mid in self.models]

    def symbols_of(self, model_id: str) -> tuple[str, ...]:
        """The symbols of a multi model; () for any other model id."""
        return self.models.get(model_id, ())

    def to_toml(self) -> dict[str, Any]:
        return {
            f"{ModelKey.parse(mid).family}_{ModelKey.parse(mid).tf}": list(symbols)
            for mid, symbols in self.models.items()
        }

    def __repr__(self) -> str:
        return repr(self.to_toml())


def _key_of(name: str, where: str) -> ModelKey:
    family, _, tf = name.rpartition("_")
    if not family:
        raise ConfigError(f"config key '{where}': a multi model is named family_TF, e.g. lgbm_1h")
    if family in SINGLE_ONLY_FAMILIES:
        raise ConfigError(
            f"config key '{where}': {family} trains on one symbol only (its strategy is one "
            f"market's); multi-symbol families: {list(MULTI_FAMILIES)}"
        )
    if family not in MULTI_FAMILIES:
        raise ConfigError(
            f"config key '{where}': unknown family {family!r}; multi-symbol families: "
            f"{list(MULTI_FAMILIES)}"
        )
    try:
        check_timeframe(tf)
    except BadIdentifier as exc:
        raise ConfigError(f"config key '{where}': {exc}") from None
    return ModelKey(family, MULTI_SYMBOL, tf)


def _symbols_of(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ConfigError(f"config key '{where}' must be a list of symbols, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"config key '{where}' lists a symbol twice: {value!r}")
    if len(value) < MIN_SYMBOLS:
        raise ConfigError(
            f"config key '{where}' must list at least {MIN_SYMBOLS} symbols (one symbol is a "
            f"single-symbol model of [models] symbols), got {value!r}"
        )
    try:
        for symbol in value:
            check_symbol(symbol)
    except BadIdentifier as exc:
        raise ConfigError(f"config key '{where}': {exc}") from None
    return tuple(value)


def multi_model_id(family: str, tf: str) -> str:
    return model_id(family, MULTI_SYMBOL, tf)
