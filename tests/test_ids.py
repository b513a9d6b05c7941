"""``domain.ids``: the one validator of model ids, versions, symbols and
timeframes. What it accepts is a safe single path component and Redis key
part; what it refuses gets a ``BadIdentifier`` that names the identifier."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_daemon.domain.errors import BadDataError
from quantum_daemon.domain.ids import (
    RULES,
    BadIdentifier,
    check_family,
    check_model_id,
    check_symbol,
    check_timeframe,
    check_version,
    is_model_id,
)
from quantum_daemon.domain.timeframes import TIMEFRAME_MS

GOOD_IDS = ["xgb_BTCUSDT_1h", "evo_model_ETHUSDT_15m", "rl_sizer_1000PEPEUSDT_1d", "nhits_multi_4h"]
BAD_IDS = [
    "",
    "xgb_BTC\x00USDT_1h",
    "xgb_" + "A" * 293 + "_1h",
    "xgb_../../etc_1h",
    "xgb_BTC/USDT_1h",
    "xgb_BTCUSDT_7m",
    "XGB_BTCUSDT_1h",
    "xgb_btcusdt_1h",
    "_BTCUSDT_1h",
    "xgb_BTCUSDT_1h\n",
    ".xgb_BTCUSDT_1h",
    "xgb_BTCUSDT",
    "xgb_BTC\udcffUSDT_1h",
    "xgb_BTCUSDT_1h ",
]


@pytest.mark.parametrize("model_id", GOOD_IDS)
def test_well_formed_model_ids_are_accepted(model_id: str) -> None:
    assert check_model_id(model_id) == model_id and is_model_id(model_id)


@pytest.mark.parametrize("model_id", BAD_IDS)
def test_malformed_model_ids_are_refused_with_a_clear_message(model_id: str) -> None:
    with pytest.raises(BadIdentifier, match=r"model id|family|symbol|timeframe") as info:
        check_model_id(model_id)
    assert isinstance(info.value, BadDataError)
    message = str(info.value)
    assert "\x00" not in message and len(message) < 200 and message.isascii()
    assert not is_model_id(model_id)


def test_the_limits_are_stated_once() -> None:
    with pytest.raises(BadIdentifier, match=f"longer than {RULES['model id'].max_len}"):
        check_model_id("xgb_" + "A" * 100 + "_1h")
    with pytest.raises(BadIdentifier, match=f"longer than {RULES['symbol'].max_len}"):
        check_symbol("A" * 33)
    with pytest.raises(BadIdentifier, match="not one of"):
        check_timeframe("2h")
    with pytest.raises(BadIdentifier, match="vYYYYMMDD_HHMMSS"):
        check_version("v1")
    with pytest.raises(BadIdentifier, match="must be text"):
        check_family(b"xgb")
    assert check_version("v20240101_000000") == "v20240101_000000"
    assert [check_timeframe(tf) for tf in TIMEFRAME_MS] == list(TIMEFRAME_MS)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.text(max_size=120), st.from_regex(r"[a-z_]{1,8}_[A-Z0-9]{1,8}_1[hmd]")))
def test_an_accepted_id_is_one_safe_path_component(model_id: str) -> None:
    try:
        check_model_id(model_id)
    except BadIdentifier as exc:
        assert str(exc).isascii()
        return
    assert len(model_id.encode()) <= 96 and model_id.isascii() and model_id.isprintable()
    assert "/" not in model_id and "\x00" not in model_id and not model_id.startswith(".")
    assert ":" not in model_id  # safe inside a Redis key too


@settings(max_examples=300, deadline=None)
@given(
    st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True),
    st.from_regex(r"[A-Z0-9]{1,32}", fullmatch=True),
    st.sampled_from(sorted(TIMEFRAME_MS)),
)
def test_ids_built_from_valid_parts_are_valid(family: str, symbol: str, tf: str) -> None:
    model_id = f"{family}_{symbol}_{tf}"
    if len(model_id) <= RULES["model id"].max_len:
        assert check_model_id(model_id) == model_id
