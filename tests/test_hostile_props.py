"""Property-based: arbitrary bytes into every decoder at the daemon's edge
(control entries, bar entries with the clock, stream names). Each input is
either accepted as valid or rejected with a reason; nothing else is raised."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_daemon.domain.ids import check_model_id, check_symbol, check_version
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.timeframes import TIMEFRAME_MS
from quantum_daemon.ingest.decode import FIELDS, Rejection, Series, decode_bar, explain_entry
from quantum_daemon.ingest.streams import RefusedStream, classify_stream, shown_name
from quantum_daemon.lifecycle.control import (
    COMMANDS,
    BadCommand,
    Command,
    parse_command,
)
from quantum_daemon.lifecycle.control import (
    FIELDS as CONTROL_FIELDS,
)
from quantum_daemon.storage.bar_store import Bar

KEYS = Keys()
NOW_MS = 1_735_689_600_000  # 2025-01-01

# -- control entries --------------------------------------------------------------

control_names = st.one_of(
    st.sampled_from([n.encode() for n in CONTROL_FIELDS]), st.binary(max_size=12)
)
control_values = st.one_of(
    st.sampled_from([c.encode() for c in COMMANDS]),
    st.sampled_from([b"xgb_BTCUSDT_1h", b"evo_model_multi_4h", b"v20240101_000000"]),
    st.binary(max_size=64),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(min_size=300, max_size=6000),
)


@settings(max_examples=800, deadline=None)
@given(st.dictionaries(control_names, control_values, max_size=8))
def test_any_control_entry_is_a_valid_command_or_refused_with_a_reason(
    fields: dict[bytes, bytes],
) -> None:
    try:
        command = parse_command("1-0", fields)
    except BadCommand as exc:
        assert str(exc)
        return
    assert isinstance(command, Command) and command.name in COMMANDS
    assert check_model_id(command.model_id) == command.model_id
    if command.version is not None:
        assert check_version(command.version) == command.version


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(COMMANDS),
    st.sampled_from(["xgb_BTCUSDT_1h", "rl_sizer_ETHUSDT_4h", "nhits_multi_1d"]),
    st.text(min_size=1, max_size=80).filter(lambda t: t.isprintable()),
)
def test_well_formed_commands_are_accepted(name: str, model_id: str, reason: str) -> None:
    fields = {b"command": name.encode(), b"model_id": model_id.encode()}
    fields |= {b"version": b"v20240101_000000", b"reason": reason.encode()}
    assert parse_command("7-1", fields) == Command(
        name, model_id, "v20240101_000000", reason, "7-1"
    )


# -- bar entries, with the clock --------------------------------------------------

bar_names = st.one_of(st.sampled_from([n.encode() for n in FIELDS]), st.binary(max_size=8))
bar_values = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 10**16).map(lambda i: str(i).encode()),
    st.floats().map(lambda f: repr(f).encode()),
)
flat_entries = st.lists(st.one_of(bar_names, bar_values), max_size=40)
series = st.sampled_from(
    [Series.of("BTCUSDT", "1h"), Series.of("ETHUSDT", "1m", 5.0), Series.of("X", "7m")]
)


@settings(max_examples=800, deadline=None)
@given(series, flat_entries, st.integers(0, 10**15))
def test_any_bar_entry_is_a_bar_within_the_clock_or_a_rejection(
    where: Series, fields: list[bytes], now_ms: int
) -> None:
    result = decode_bar(where, fields, 4096, now_ms)
    assert type(result) in (Bar, Rejection)
    if isinstance(result, Bar):
        assert result.ts <= now_ms + where.max_future_ms
        assert where.step_ms and result.ts % where.step_ms == 0
    else:
        assert result.detail
    assert decode_bar(where, fields, 4096, now_ms) == explain_entry(where, fields, 4096, now_ms)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**15 - 1), st.sampled_from(sorted(TIMEFRAME_MS)))
def test_a_valid_bar_is_kept_exactly_when_it_is_within_one_bar_of_the_clock(
    ts: int, tf: str
) -> None:
    where = Series.of("BTCUSDT", tf)
    ts -= ts % TIMEFRAME_MS[tf]
    fields = [b"ts", str(ts).encode(), b"open", b"1", b"high", b"2", b"low", b"0.5"]
    fields += [b"close", b"1.5", b"volume", b"3"]
    result = decode_bar(where, fields, 4096, NOW_MS)
    if ts <= NOW_MS + TIMEFRAME_MS[tf]:
        assert isinstance(result, Bar) and result.ts == ts
    else:
        assert isinstance(result, Rejection) and result.reason == "ts_in_future"


# -- stream names (discovery) -----------------------------------------------------

names = st.one_of(
    st.binary(max_size=60),
    st.binary(max_size=40).map(lambda b: b"quantum:bars:" + b),
    st.tuples(st.binary(max_size=12), st.binary(max_size=6)).map(
        lambda p: b"quantum:bars:" + p[0] + b":" + p[1]
    ),
    st.tuples(st.text(max_size=12), st.sampled_from(["1h", "7m", "x", ""])).map(
        lambda p: f"quantum:bars:{p[0]}:{p[1]}".encode("utf-8", "surrogatepass")
    ),
)


@settings(max_examples=1000, deadline=None)
@given(names)
def test_any_stream_name_is_a_series_refused_with_a_reason_or_not_a_bar_stream(
    name: bytes,
) -> None:
    verdict = classify_stream(KEYS, name)
    if isinstance(verdict, Series):
        assert KEYS.bars(verdict.symbol, verdict.tf).encode() == name
        assert check_symbol(verdict.symbol) == verdict.symbol
    elif isinstance(verdict, RefusedStream):
        assert verdict.reason and verdict.name == name
    else:
        assert verdict is None
    shown = shown_name(name)
    assert shown.isascii() and shown.isprintable() and len(shown) <= 203


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[A-Z0-9]{1,32}", fullmatch=True), st.sampled_from(sorted(TIMEFRAME_MS)))
def test_every_valid_bar_stream_name_is_read(symbol: str, tf: str) -> None:
    assert classify_stream(KEYS, KEYS.bars(symbol, tf).encode()) == Series.of(symbol, tf)
