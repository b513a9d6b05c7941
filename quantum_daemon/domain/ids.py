"""Identifiers: model identity, and the one validator of every id that
arrives from outside (control stream, API, CLI, stream names) before it
reaches a path, a Redis key or a log line.

A model is one (family, symbol, timeframe) of ``[models]``. Its id is
``{family}_{SYMBOL}_{TF}`` (``{family}_multi_{TF}`` for a model over several
symbols); a family may itself hold ``_``, so ids are parsed from the right.

What each identifier may hold, in one place (``RULES``):

- family: ``[a-z][a-z0-9_]*``, at most 32 characters (``evo_model``);
- symbol: ``[A-Z0-9]+``, at most 32 characters (``BTCUSDT``, upper case
  without separator);
- timeframe: one of ``TIMEFRAME_MS`` (``1m`` ... ``1d``); in a bar stream's
  name, any ``[A-Za-z0-9]`` token of at most 8 characters (a stream of an
  unknown timeframe is read, and its entries dead-lettered as such);
- model id: ``{family}_{symbol or multi}_{timeframe}``, at most 96 characters;
- version: ``vYYYYMMDD_HHMMSS`` (what ``storage.artifacts`` names a version).

Every check raises ``BadIdentifier`` (a ``BadDataError``) whose message names
the identifier, shows the value (``ascii``-escaped, cut to 80 characters: a
NUL or a lone surrogate prints as an escape) and says what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from quantum_daemon.domain.errors import BadDataError
from quantum_daemon.domain.timeframes import TIMEFRAME_MS

MULTI_SYMBOL = "multi"  # the symbol part of a model over several symbols
SHOWN_CHARS = 80  # of a refused value, in an error message


@dataclass(frozen=True)
class Rule:
    """What an identifier may hold: ``pattern`` (whole string), ``max_len``."""

    pattern: re.Pattern[str]
    max_len: int
    allowed: str  # said in error messages


RULES: dict[str, Rule] = {
    "family": Rule(re.compile(r"[a-z][a-z0-9_]*"), 32, "lower-case letters, digits and '_'"),
    "symbol": Rule(re.compile(r"[A-Z0-9]+"), 32, "upper-case letters and digits"),
    "model id": Rule(
        re.compile(r"[a-z][a-z0-9_]*_[A-Za-z0-9]+_[0-9]+[a-z]"), 96, "family_SYMBOL_TF"
    ),
    "timeframe token": Rule(re.compile(r"[A-Za-z0-9]+"), 8, "letters and digits"),
    "version": Rule(re.compile(r"v[0-9]{8}_[0-9]{6}"), 16, "vYYYYMMDD_HHMMSS"),
}


class BadIdentifier(BadDataError):
    """An identifier that is malformed: wrong characters, too long, unknown
    timeframe. The message says which identifier and what it may hold."""


class UnknownModel(KeyError):
    """The model id is not one of the configured models."""


def shown(value: object) -> str:
    """``value`` safe to print anywhere: ascii-escaped, at most SHOWN_CHARS."""
    text = ascii(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...'"


def _check(kind: str, value: object) -> str:
    rule = RULES[kind]
    if not isinstance(value, str):
        raise BadIdentifier(f"{kind} must be text, got {type(value).__name__}")
    if not value:
        raise BadIdentifier(f"{kind} is empty")
    if len(value) > rule.max_len:
        raise BadIdentifier(f"{kind} {shown(value)} is longer than {rule.max_len} characters")
    if not rule.pattern.fullmatch(value):
        raise BadIdentifier(f"{kind} {shown(value)} is not {rule.allowed}")
    return value


def check_family(family: object) -> str:
    return _check("family", family)


def check_symbol(symbol: object) -> str:
    return _check("symbol", symbol)


def symbol_of_pair(pair: object) -> str:
    """The bar-stream symbol of an exchange pair in ccxt's unified form:
    ``BTC/USDT`` -> ``BTCUSDT``; a derivative's settle currency is dropped
    (``BTC/USDT:USDT`` -> ``BTCUSDT``), as replay does for Freqtrade's futures files."""
    if not isinstance(pair, str) or pair.count("/") != 1:
        raise BadIdentifier(f"pair {shown(pair)} is not BASE/QUOTE (ccxt's form, e.g. 'BTC/USDT')")
    base, quote = pair.split(":", 1)[0].split("/")
    if not base or not quote:
        raise BadIdentifier(f"pair {shown(pair)} is not BASE/QUOTE (ccxt's form, e.g. 'BTC/USDT')")
    return check_symbol(base + quote)


def check_timeframe(tf: object) -> str:
    if not isinstance(tf, str) or tf not in TIMEFRAME_MS:
        raise BadIdentifier(f"timeframe {shown(tf)} is not one of {list(TIMEFRAME_MS)}")
    return tf


def check_timeframe_token(tf: object) -> str:
    """A timeframe-shaped name, known or not (the part of a stream name)."""
    return _check("timeframe token", tf)


def check_version(version: object) -> str:
    return _check("version", version)


def check_model_id(model_id: object) -> str:
    """``model_id`` if it is a well-formed ``{family}_{SYMBOL}_{TF}`` (each
    part checked), else ``BadIdentifier``."""
    text = _check("model id", model_id)
    family, symbol, tf = text.rsplit("_", 2)
    check_family(family)
    if symbol != MULTI_SYMBOL:
        check_symbol(symbol)
    check_timeframe(tf)
    return text


def is_model_id(name: object) -> bool:
    try:
        check_model_id(name)
    except BadIdentifier:
        return False
    return True


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
        """The key of ``{family}_{SYMBOL}_{TF}`` (a family may hold ``_``).
        Only splits: ``check_model_id`` validates."""
        parts = model_id.rsplit("_", 2)
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"not a model id (family_SYMBOL_TF): {shown(model_id)}")
        return cls(*parts)


def model_id(family: str, symbol: str, tf: str) -> str:
    return f"{family}_{symbol}_{tf}"


def model_keys(
    families: Iterable[str], symbols: Iterable[str], timeframes: Iterable[str]
) -> list[ModelKey]:
    """Every configured model, in a stable order."""
    return [ModelKey(f, s, t) for f in families for s in symbols for t in timeframes]
