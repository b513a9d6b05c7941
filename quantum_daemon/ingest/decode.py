"""The edge: one stream entry's fields -> a ``Bar`` or a ``Rejection``.

Pure and total: no I/O, and it never raises, whatever the fields hold (the
consumer dead-letters a rejection and keeps the stream flowing).

Fields come as Redis sends them: a flat list ``[name, value, name, value,
...]`` of bytes (the consumer skips redis-py's conversion to a dict), or as a
mapping. ``float`` and ``int`` parse bytes directly. A valid entry in the
contract's field order takes one straight path (``_decode_valid``); anything
else goes through ``explain_entry``, which names the first problem.

The clock is the caller's: given ``now_ms`` (the consumer passes the wall
clock, once per batch), a bar whose ``ts`` is more than the series'
``max_future_ms`` ahead of it is rejected (``ts_in_future``): one bar with a
far-future ``ts`` would otherwise become the series' newest bar for good.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from quantum_daemon.domain.timeframes import TIMEFRAME_MS
from quantum_daemon.storage.bar_store import Bar

FIELDS = ("ts", "open", "high", "low", "close", "volume")
_FIELD_KEYS = tuple(name.encode() for name in FIELDS)
_FIELD_KEY_BYTES = sum(len(key) for key in _FIELD_KEYS)
MAX_TS_DIGITS = 15  # epoch ms below 10**15 (year 33658): fits SQLite's int64 with room
DLQ_VALUE_PREVIEW = 64  # characters kept per value of an oversized entry in the DLQ
_INF = math.inf
_NO_LIMIT = 10**MAX_TS_DIGITS  # above any ts that passes the digit check
_new_bar = tuple.__new__  # Bar(...) at C speed: the named tuple's __new__ is Python code

# An entry's fields: a flat [name, value, ...] list, a mapping, or None (deleted).
RawFields = Sequence[Any] | Mapping[Any, Any] | None


class Reason(StrEnum):
    """Why an entry was rejected (the ``reason`` of its DLQ entry)."""

    TOO_LARGE = "too_large"
    UNKNOWN_TIMEFRAME = "unknown_timeframe"
    TRIMMED = "trimmed"  # pending, but deleted from the stream before it was stored
    MISSING_FIELD = "missing_field"
    UNEXPECTED_FIELD = "unexpected_field"
    NOT_NUMERIC = "not_numeric"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    NOT_FINITE = "not_finite"
    NON_POSITIVE_PRICE = "non_positive_price"
    NEGATIVE_VOLUME = "negative_volume"
    HIGH_BELOW_OPEN_CLOSE = "high_below_open_close"
    LOW_ABOVE_OPEN_CLOSE = "low_above_open_close"
    OFF_GRID = "off_grid"
    TS_IN_FUTURE = "ts_in_future"  # more than max_future_ms ahead of the wall clock
    CONFLICT = "conflict"  # differs from the stored bar of the same key (found by the store)


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str


@dataclass(frozen=True)
class Series:
    """The series a stream carries; ``step_ms`` is None for an unknown
    timeframe; ``max_future_ms``: how far ahead of the clock a ``ts`` may be."""

    symbol: str
    tf: str
    step_ms: int | None
    max_future_ms: int = 0

    @classmethod
    def of(cls, symbol: str, tf: str, max_future_s: float = 0.0) -> Series:
        """``max_future_s`` 0 (the default): one bar of the timeframe."""
        step = TIMEFRAME_MS.get(tf)
        margin = round(max_future_s * 1000) if max_future_s > 0 else (step or 0)
        return cls(symbol, tf, step, margin)


def decode_bar(
    series: Series, fields: RawFields, max_entry_bytes: int, now_ms: int | None = None
) -> Bar | Rejection:
    """Validate one entry of ``series``' stream (against the clock when
    ``now_ms`` is given); never raises."""
    latest = _NO_LIMIT if now_ms is None else now_ms + series.max_future_ms
    try:
        bar = _decode_valid(series, fields, max_entry_bytes, latest)
    except Exception:  # the edge must hold whatever arrives
        bar = None
    return bar if bar is not None else explain_entry(series, fields, max_entry_bytes, now_ms)


def _decode_valid(series: Series, fields: Any, max_bytes: int, latest: int) -> Bar | None:
    """The bar if the entry is valid and in the contract's field order,
    else None (or an exception)."""
    k_ts, raw_ts, k_o, raw_o, k_h, raw_h, k_lo, raw_lo, k_c, raw_c, k_v, raw_v = fields
    if (k_ts != b"ts" or k_o != b"open" or k_h != b"high" or k_lo != b"low"
            or k_c != b"close" or k_v != b"volume"):  # fmt: skip
        return None
    size = len(raw_ts) + len(raw_o) + len(raw_h) + len(raw_lo) + len(raw_c) + len(raw_v)
    if size + _FIELD_KEY_BYTES > max_bytes or len(raw_ts) > MAX_TS_DIGITS or not raw_ts.isdigit():
        return None
    ts, step = int(raw_ts), series.step_ms
    o, h, lo, c, v = float(raw_o), float(raw_h), float(raw_lo), float(raw_c), float(raw_v)
    # One chain covers every value check: NaN fails any comparison, lo > 0
    # makes every price positive, h < inf makes every price finite.
    if (0.0 < lo <= o <= h and lo <= c <= h < _INF and 0.0 <= v < _INF and step
            and not ts % step and ts <= latest):  # fmt: skip
        return _new_bar(Bar, (series.symbol, series.tf, ts, o, h, lo, c, v))
    return None


def explain_entry(
    series: Series, fields: RawFields, max_entry_bytes: int, now_ms: int | None = None
) -> Bar | Rejection:
    """The thorough decoder: checks one thing after the other, so a
    rejection names its first reason. Never raises."""
    try:
        return _explain(series, fields, max_entry_bytes, now_ms)
    except Exception as exc:
        return Rejection(Reason.NOT_NUMERIC, f"undecodable entry: {type(exc).__name__}")


def as_mapping(fields: RawFields) -> Mapping[Any, Any] | None:
    """The fields as a mapping (a flat list's repeated names keep the last value)."""
    if fields is None or isinstance(fields, Mapping):
        return fields
    return dict(zip(fields[::2], fields[1::2], strict=False))


def _explain(series: Series, raw: RawFields, max_bytes: int, now_ms: int | None) -> Bar | Rejection:
    if not raw:  # Redis gives nil (redis-py None or {}) for a pending entry since deleted
        return Rejection(Reason.TRIMMED, "the entry was deleted from the stream before it was read")
    fields = as_mapping(raw)
    assert fields is not None
    if not isinstance(raw, Mapping) and (len(raw) % 2 or len(raw) != 2 * len(fields)):
        return Rejection(Reason.UNEXPECTED_FIELD, "field names repeated, or a name without value")
    if len(fields) != len(FIELDS):
        return _reject_shape(fields, max_bytes)
    try:
        raw_ts, *raw_values = [fields[key] for key in _FIELD_KEYS]
    except KeyError:
        return _reject_shape(fields, max_bytes)
    size = _FIELD_KEY_BYTES + len(raw_ts) + sum(len(v) for v in raw_values)
    if size > max_bytes:
        return Rejection(Reason.TOO_LARGE, f"{size} bytes > {max_bytes}")
    if series.step_ms is None:
        return Rejection(Reason.UNKNOWN_TIMEFRAME, f"timeframe {series.tf!r}")
    ts = _parse_ts(raw_ts)
    if isinstance(ts, Rejection):
        return ts
    try:
        o, h, lo, c, v = map(float, raw_values)
    except (ValueError, TypeError):
        return Rejection(Reason.NOT_NUMERIC, _first_bad_float(raw_values))
    problem = _check_values(o, h, lo, c, v)
    if problem is not None:
        return problem
    if ts % series.step_ms:
        return Rejection(Reason.OFF_GRID, f"ts {ts} is not a multiple of {series.tf}")
    if now_ms is not None and ts > now_ms + series.max_future_ms:
        return Rejection(
            Reason.TS_IN_FUTURE,
            f"ts {ts} is {(ts - now_ms) / 1000:.0f} s ahead of the clock "
            f"(at most {series.max_future_ms / 1000:g} s)",
        )
    return Bar(series.symbol, series.tf, ts, o, h, lo, c, v)


def _reject_shape(fields: Mapping[Any, Any], max_bytes: int) -> Rejection:
    size = sum(len(k) + len(v) for k, v in fields.items())
    if size > max_bytes:
        return Rejection(Reason.TOO_LARGE, f"{size} bytes > {max_bytes}")
    names = {_text(k) for k in fields}
    missing = [name for name in FIELDS if name not in names]
    if missing:
        return Rejection(Reason.MISSING_FIELD, f"missing {missing}")
    extra = sorted(names - set(FIELDS))
    if not extra:
        return Rejection(Reason.UNEXPECTED_FIELD, "field names repeated or not bytes")
    return Rejection(Reason.UNEXPECTED_FIELD, f"unexpected {extra}")


def _parse_ts(raw: Any) -> int | Rejection:
    if not raw.isdigit():
        return Rejection(Reason.NOT_NUMERIC, "ts is not a non-negative integer")
    if len(raw) > MAX_TS_DIGITS:
        return Rejection(Reason.TS_OUT_OF_RANGE, f"ts has {len(raw)} digits")
    return int(raw)


def _first_bad_float(raw_values: list[Any]) -> str:
    for name, raw in zip(FIELDS[1:], raw_values, strict=True):
        try:
            float(raw)
        except (ValueError, TypeError):
            return f"{name} is not a number"
    return "not a number"


def _check_values(o: float, h: float, lo: float, c: float, v: float) -> Rejection | None:
    if not all(map(math.isfinite, (o, h, lo, c, v))):
        return Rejection(Reason.NOT_FINITE, "NaN or infinity")
    if o <= 0 or h <= 0 or lo <= 0 or c <= 0:
        return Rejection(Reason.NON_POSITIVE_PRICE, "a price is <= 0")
    if v < 0:
        return Rejection(Reason.NEGATIVE_VOLUME, f"volume {v} < 0")
    if h < o or h < c:
        return Rejection(Reason.HIGH_BELOW_OPEN_CLOSE, f"high {h} < max(open, close)")
    if lo > o or lo > c:
        return Rejection(Reason.LOW_ABOVE_OPEN_CLOSE, f"low {lo} > min(open, close)")
    return None


def fields_json(raw: RawFields, preview: int | None = None) -> str:
    """The original fields as JSON text (for the DLQ); values cut to
    ``preview`` characters when given (oversized entries)."""
    fields = as_mapping(raw)
    if fields is None:
        return "null"
    items = {_text(k): _text(v) for k, v in fields.items()}
    if preview is not None:
        items = {k: v if len(v) <= preview else v[:preview] + "…" for k, v in items.items()}
    return json.dumps(items, ensure_ascii=False)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return str(value)
