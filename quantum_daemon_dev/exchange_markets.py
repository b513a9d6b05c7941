"""Binance's markets endpoint on 127.0.0.1, so that Freqtrade starts offline.

Freqtrade loads the exchange's markets (ccxt ``load_markets``) before any
backtest, even on local data, and has no offline cache of them. This serves
``GET /api/v3/exchangeInfo`` from ``data/binance_exchange_info.json`` (the
shape Binance's public API answers, for BTCUSDT and ETHUSDT with the
filters Binance listed for them in 2024; ccxt parses it as it parses the
real answer), and ``freqtrade_exchange`` points Freqtrade's ``binance``
there through its documented ``ccxt_config`` and spot markets only. Nothing
in Freqtrade or ccxt is patched: only the URL differs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

EXCHANGE_INFO = Path(__file__).parent / "data" / "binance_exchange_info.json"


class _Handler(BaseHTTPRequestHandler):
    body: bytes = b""
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.split("?")[0] != "/api/v3/exchangeInfo":
            self.send_error(404, "only exchangeInfo is served here")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the requests are kept in ``requests``


@contextlib.contextmanager
def binance_markets_server() -> Iterator[tuple[str, list[str]]]:
    """(base URL of the served ``/api/v3``, the paths requested so far)."""
    requests: list[str] = []
    handler = type(
        "Handler", (_Handler,), {"body": EXCHANGE_INFO.read_bytes(), "requests": requests}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="binance-markets", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v3", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def freqtrade_exchange(api_url: str, pairs: list[str]) -> dict[str, Any]:
    """Freqtrade's ``exchange`` config section for Binance spot at ``api_url``."""
    ccxt = {"urls": {"api": {"public": api_url}}, "options": {"fetchMarkets": {"types": ["spot"]}}}
    return {
        "name": "binance",
        "key": "",
        "secret": "",
        "pair_whitelist": pairs,
        "ccxt_config": ccxt,
        "ccxt_async_config": ccxt,
    }
