"""``[models.multi]``: the global models, one model over several symbols.

A key is ``{family}_{TF}``, its value the symbols the model trains on and
answers for::

    [models.multi]
    lgbm_1h = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

gives the model ``lgbm_multi_1h`` (docs/families.md, "Global models"); a
key that is a family alone (``lgbm = [...]``) gives one for each of
``[models] timeframes``. A global model replaces its family's single-symbol
models on its symbols and timeframe (``with_multi``): on a series a family
is either per-symbol or global, as its one trust weight and its one member
of the series' ensemble require. Only
the forecasting families that can pool series train as multi: the tree
families (the symbol as a categorical feature) and the torch families
(channel-independent windows of every symbol). ``evo_model`` and
``rl_sizer`` stay single-symbol: their state (a rule's parameters, a sizing
policy's book) is a strategy of one market. Every check raises
``ConfigError`` naming the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    """The checked table: model id -> its symbols, in the order given;
    ``per_family``: the entries named by a family alone, until
    ``for_timeframes`` makes them models."""

    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    per_family: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    @classmethod
    def from_toml(cls, raw: Any, where: str) -> MultiModels:
        if not isinstance(raw, dict):
            raise ConfigError(f"[{where}] must be a table, got {type(raw).__name__}")
        models: dict[str, tuple[str, ...]] = {}
        per_family: dict[str, tuple[str, ...]] = {}
        for name, symbols in raw.items():
            at = f"{where}.{name}"
            if name in MULTI_FAMILIES or name in SINGLE_ONLY_FAMILIES:
                _check_family(name, at)
                per_family[name] = _symbols_of(symbols, at)
                continue
            models[_key_of(name, at).model_id] = _symbols_of(symbols, at)
        return cls(models, per_family)

    def for_timeframes(self, timeframes: tuple[str, ...]) -> MultiModels:
        """The entries named by a family alone made one model per timeframe."""
        models = dict(self.models)
        for family, symbols in self.per_family.items():
            for tf in timeframes:
                model = multi_model_id(family, tf)
                if model in models and models[model] != symbols:
                    raise ConfigError(
                        f"config key 'models.multi.{family}' and 'models.multi.{family}_{tf}' "
                        "both give the symbols of " + model
                    )
                models[model] = symbols
        return MultiModels(models)

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
    _check_family(family, where)
    try:
        check_timeframe(tf)
    except BadIdentifier as exc:
        raise ConfigError(f"config key '{where}': {exc}") from None
    return ModelKey(family, MULTI_SYMBOL, tf)


def _check_family(family: str, where: str) -> None:
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


def with_multi(
    singles: Iterable[ModelKey], multi: Mapping[str, tuple[str, ...]]
) -> list[ModelKey]:
    """The models to run: the single-symbol ones that no global model of
    their family and timeframe covers, then the global ones."""
    covered = {
        (key.family, symbol, key.tf)
        for key in map(ModelKey.parse, multi)
        for symbol in multi[key.model_id]
    }
    kept = [k for k in singles if (k.family, k.symbol, k.tf) not in covered]
    return kept + [ModelKey.parse(model_id) for model_id in multi]


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
