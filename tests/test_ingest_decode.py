"""The edge: each way an entry can be wrong has its own reason, a valid one
becomes the exact bar published, and nothing that arrives makes it raise."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_daemon.ingest.decode import (
    FIELDS,
    Reason,
    Rejection,
    Series,
    decode_bar,
    explain_entry,
    fields_json,
)
from quantum_daemon.storage.bar_store import Bar

T0 = 1_704_067_200_000
_FIELD_NAMES = [name.encode() for name in FIELDS]
BTC_1H = Series.of("BTCUSDT", "1h")
LIMIT = 4096


def entry(**overrides: Any) -> dict[bytes, bytes]:
    values = {
        "ts": T0,
        "open": "100.5",
        "high": "101",
        "low": "99.25",
        "close": "100",
        "volume": "3",
    }
    values.update(overrides)
    return {k.encode(): _raw(v) for k, v in values.items() if v is not None}


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def test_a_valid_entry_becomes_its_bar() -> None:
    assert decode_bar(BTC_1H, entry(), LIMIT) == Bar(
        "BTCUSDT", "1h", T0, 100.5, 101.0, 99.25, 100.0, 3.0
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (entry(volume=None), Reason.MISSING_FIELD),
        (entry(ts=None, close=None), Reason.MISSING_FIELD),
        ({**entry(), b"source": b"x"}, Reason.UNEXPECTED_FIELD),
        ({**entry(volume=None), b"vol": b"3"}, Reason.MISSING_FIELD),
        (entry(ts="17e11"), Reason.NOT_NUMERIC),
        (entry(ts="-3600000"), Reason.NOT_NUMERIC),
        (entry(ts="1" * 16), Reason.TS_OUT_OF_RANGE),
        (entry(open="abc"), Reason.NOT_NUMERIC),
        (entry(volume=""), Reason.NOT_NUMERIC),
        (entry(high=b"\xff\xfe"), Reason.NOT_NUMERIC),
        (entry(close="nan"), Reason.NOT_FINITE),
        (entry(high="inf"), Reason.NOT_FINITE),
        (entry(volume="1e999"), Reason.NOT_FINITE),
        (entry(low="0"), Reason.NON_POSITIVE_PRICE),
        (entry(open="-1"), Reason.NON_POSITIVE_PRICE),
        (entry(volume="-0.5"), Reason.NEGATIVE_VOLUME),
        (entry(high="100.2"), Reason.HIGH_BELOW_OPEN_CLOSE),
        (entry(low="100.1"), Reason.LOW_ABOVE_OPEN_CLOSE),
        (entry(ts=T0 + 60_000), Reason.OFF_GRID),
        (entry(volume="1" * 5000), Reason.TOO_LARGE),
        ({**entry(), b"pad": b"x" * 5000}, Reason.TOO_LARGE),
        ({}, Reason.TRIMMED),
        (None, Reason.TRIMMED),
    ],
)
def test_each_malformed_entry_is_rejected_with_its_reason(
    fields: dict[bytes, bytes] | None, reason: Reason
) -> None:
    result = decode_bar(BTC_1H, fields, LIMIT)
    assert isinstance(result, Rejection)
    assert result.reason is reason
    assert result.detail


def test_an_unknown_timeframe_rejects_every_entry() -> None:
    result = decode_bar(Series.of("BTCUSDT", "7m"), entry(), LIMIT)
    assert result == Rejection(Reason.UNKNOWN_TIMEFRAME, "timeframe '7m'")


def test_zero_volume_and_a_flat_bar_are_valid() -> None:
    flat = entry(open="5", high="5", low="5", close="5", volume="0")
    assert decode_bar(BTC_1H, flat, LIMIT) == Bar("BTCUSDT", "1h", T0, 5.0, 5.0, 5.0, 5.0, 0.0)


def test_dlq_fields_keep_the_original_text() -> None:
    assert fields_json(entry(open=b"\xffx")) == (
        '{"ts": "1704067200000", "open": "\\\\xffx", "high": "101", "low": "99.25", '
        '"close": "100", "volume": "3"}'
    )
    assert fields_json({b"v": b"y" * 100}, preview=4) == '{"v": "yyyy…"}'
    assert fields_json(None) == "null"


# -- properties ----------------------------------------------------------------

field_names = st.one_of(st.sampled_from([n.encode() for n in FIELDS]), st.binary(max_size=8))
field_values = st.one_of(
    st.binary(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
    st.integers().map(lambda i: str(i).encode()),
    st.text(max_size=20).map(str.encode),
)
series = st.sampled_from([BTC_1H, Series.of("ETHUSDT", "5m"), Series.of("X", "2h")])


@settings(max_examples=600, deadline=None)
@given(series, st.dictionaries(field_names, field_values, max_size=9), st.integers(1, 200))
def test_random_field_maps_never_raise(
    where: Series, fields: dict[bytes, bytes], limit: int
) -> None:
    result = decode_bar(where, fields, limit)
    assert isinstance(result, Bar | Rejection)
    if isinstance(result, Bar):
        assert all(math.isfinite(x) for x in result[3:])
        assert result.low <= min(result.open, result.close) <= result.high
    fields_json(fields)  # the DLQ can always describe what arrived


@st.composite
def valid_bars(draw: st.DrawFn) -> Bar:
    price = st.floats(1e-8, 1e9, allow_nan=False, allow_infinity=False)
    o, c = draw(price), draw(price)
    high = draw(st.floats(max(o, c), 2e9, allow_nan=False))
    low = draw(st.floats(1e-9, min(o, c), allow_nan=False, exclude_min=True))
    volume = draw(st.floats(0, 1e12, allow_nan=False))
    ts = draw(st.integers(0, 2_000_000)) * 3_600_000  # hours since 1970, up to 2198
    return Bar("BTCUSDT", "1h", ts, o, high, low, c, volume)


@settings(max_examples=300, deadline=None)
@given(valid_bars())
def test_a_published_bar_decodes_to_exactly_itself(bar: Bar) -> None:
    fields = {
        b"ts": str(bar.ts).encode(),
        **{name.encode(): repr(getattr(bar, name)).encode() for name in FIELDS[1:]},
    }
    assert decode_bar(BTC_1H, fields, LIMIT) == bar


canonical_entries = st.tuples(*[field_values for _ in FIELDS]).map(
    lambda values: [x for pair in zip(_FIELD_NAMES, values, strict=True) for x in pair]
)
flat_entries = st.lists(st.one_of(field_names, field_values), max_size=14)


@settings(max_examples=600, deadline=None)
@given(series, st.one_of(canonical_entries, flat_entries), st.integers(1, 200))
def test_flat_field_lists_as_redis_sends_them_never_raise(
    where: Series, fields: list[bytes], limit: int
) -> None:
    result = decode_bar(where, fields, limit)
    assert isinstance(result, Bar | Rejection)
    fields_json(fields)


@settings(max_examples=600, deadline=None)
@given(series, st.one_of(canonical_entries, valid_bars().map(lambda b: as_fields(b))))
def test_the_fast_path_agrees_with_the_thorough_decoder(where: Series, fields: list) -> None:
    assert decode_bar(where, fields, LIMIT) == explain_entry(where, fields, LIMIT)


def as_fields(bar: Bar) -> list[bytes]:
    values = [str(bar.ts).encode()] + [repr(getattr(bar, n)).encode() for n in FIELDS[1:]]
    return [x for pair in zip(_FIELD_NAMES, values, strict=True) for x in pair]


def test_a_flat_list_in_another_order_or_with_repeats() -> None:
    shuffled = [
        b"close",
        b"100",
        b"ts",
        str(T0).encode(),
        b"open",
        b"100.5",
        b"high",
        b"101",
        b"low",
        b"99.25",
        b"volume",
        b"3",
    ]
    assert decode_bar(BTC_1H, shuffled, LIMIT) == Bar(
        "BTCUSDT", "1h", T0, 100.5, 101.0, 99.25, 100.0, 3.0
    )
    repeated = [*shuffled, b"close", b"100"]
    assert decode_bar(BTC_1H, repeated, LIMIT).reason is Reason.UNEXPECTED_FIELD  # type: ignore[union-attr]
    assert decode_bar(BTC_1H, shuffled[:-1], LIMIT).reason is Reason.UNEXPECTED_FIELD  # type: ignore[union-attr]
