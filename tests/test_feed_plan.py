"""The feed's pure decisions: which rows of an answer are closed bars, where
a series resumes, when the next bar closes; and how exchange errors are told
apart (transient or refused) and where the API is pointed."""

from __future__ import annotations

import ccxt
import pytest
import requests

from quantum_daemon.ingest.feed.exchange import classify, http_status, with_host
from quantum_daemon.ingest.feed.plan import closed_rows, next_close_ms, start_cursor

H = 3_600_000
T0 = 1_725_580_800_000  # 2024-09-06 00:00 UTC


def row(ts: int, close: float = 100.0) -> list[float]:
    return [ts, 100.0, 101.0, 99.0, close, 5.0]


def test_closed_rows_drop_the_forming_bar_and_anything_off_the_contract() -> None:
    rows = [
        row(T0 - H),  # before since: an exchange that ignored since
        row(T0),
        row(T0 + 1),  # off the grid
        row(T0 + 2 * H),
        row(T0 + H),  # out of order
        row(T0 + H, close=1.0),  # the same bar again
        [T0 + 3 * H, 100.0, None, 99.0, 100.0, 5.0],  # a missing value
        row(T0 + 4 * H),  # closes at T0 + 5h: still forming at now
    ]
    kept = closed_rows(rows, since_ms=T0, tf_ms=H, now_ms=T0 + 5 * H - 1)
    assert [r[0] for r in kept] == [T0, T0 + H, T0 + 2 * H]
    assert kept[1][4] == 100.0
    assert [r[0] for r in closed_rows(rows, T0, H, T0 + 5 * H)][-1] == T0 + 4 * H


def test_a_series_resumes_after_the_newest_known_bar_else_since_else_backfill() -> None:
    now = T0 + 10 * H + 30_000
    assert start_cursor([T0 + 3 * H, T0 + 5 * H], None, 100, now, H) == T0 + 5 * H
    assert start_cursor([None, T0 + 2 * H], T0, 100, now, H) == T0 + 2 * H
    # a bar not closed yet (a bad publisher's) is not a place to resume from
    assert start_cursor([T0 + 50 * H], T0, 100, now, H) == T0 - H
    assert start_cursor([None, None], T0 + 1, 100, now, H) == T0  # since rounds up to the grid
    assert start_cursor([], None, 4, now, H) == T0 + 9 * H - 4 * H


def test_the_next_close_is_the_first_grid_point_of_any_timeframe_after_now() -> None:
    assert next_close_ms(T0, [H]) == T0 + H
    assert next_close_ms(T0 + 1, [H, 300_000]) == T0 + 300_000
    assert next_close_ms(T0 + H - 1, [H, 4 * H]) == T0 + H


def test_with_host_points_every_api_url_at_one_base() -> None:
    urls = {
        "public": "https://api.binance.com/api/v3",
        "fapi": {"v1": "https://fapi.x.com/fapi/v1"},
    }
    assert with_host(urls, "http://127.0.0.1:8080") == {
        "public": "http://127.0.0.1:8080/api/v3",
        "fapi": {"v1": "http://127.0.0.1:8080/fapi/v1"},
    }


def _raised_from_http(status: int, error: type[ccxt.BaseError]) -> ccxt.BaseError:
    """An error raised as ccxt raises it: inside its handler of requests' HTTPError."""
    response = requests.Response()
    response.status_code = status
    try:
        try:
            raise requests.HTTPError(response=response)
        except requests.HTTPError:
            raise error("binance something")  # noqa: B904 (ccxt raises it so)
    except ccxt.BaseError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "status", "transient"),
    [
        (ccxt.NetworkError, None, True),
        (ccxt.RequestTimeout, None, True),
        (ccxt.DDoSProtection, 429, True),
        (ccxt.ExchangeNotAvailable, 503, True),
        (ccxt.ExchangeError, 503, True),  # Binance's -1008 body on a 503
        (ccxt.BadSymbol, 500, True),  # a 5xx is the exchange's trouble, whatever ccxt made of it
        (ccxt.BadSymbol, 400, False),
        (ccxt.AuthenticationError, 401, False),
        (ccxt.NotSupported, None, False),
    ],
)
def test_exchange_errors_are_transient_unless_the_exchange_refused(
    error: type[ccxt.BaseError], status: int | None, transient: bool
) -> None:
    exc = _raised_from_http(status, error) if status else error("binance something")
    assert http_status(exc) == status
    failure = classify(exc)
    assert failure.transient is transient and failure.error == error.__name__
