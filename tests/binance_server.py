"""A local HTTP server on 127.0.0.1 that answers like Binance's spot REST
API for what ccxt's binance calls from the feed (``GET /api/v3/exchangeInfo``
and ``GET /api/v3/klines``), from the recorded real bars in
``tests/fixtures/binance`` (SOURCES.md there).

The server's data is "as of" a settable time (``as_of_ms``): a kline is
answered once it has opened; one that has not closed by then is answered as
still forming, aggregated from the real 5-minute bars of that hour that have
opened (where the fixtures hold them; without them the forming kline is
left out). Faults can be queued for the next kline requests: an HTTP status
with Binance's error body (``503``, ``429``), or a connection closed without
an answer (``"close"``).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "binance"
HOUR_MS = 3_600_000
FIVE_MIN_MS = 300_000
INTERVAL_MS = {"1h": HOUR_MS}

# Binance's error bodies for the faults (docs: "Error codes for Binance").
ERROR_BODIES = {
    401: {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
    429: {
        "code": -1003,
        "msg": "Too many requests; current limit of IP is 6000 requests "
        "per minute. Please use the websocket for live updates to avoid polling the API.",
    },
    503: {
        "code": -1008,
        "msg": "Server is currently overloaded with other requests. "
        "Please try again in a few minutes.",
    },
}


def load_klines(symbol: str, tf: str) -> list[list[Any]]:
    return json.loads((FIXTURES / f"klines-{symbol}-{tf}.json").read_text())


def kline_bar(kline: list[Any]) -> tuple[int, float, float, float, float, float]:
    """(ts, open, high, low, close, volume) of a kline array."""
    return (int(kline[0]), *(float(x) for x in kline[1:6]))  # type: ignore[return-value]


@dataclass
class BinanceData:
    """The recorded klines per symbol, and the forming kline at a time."""

    hourly: dict[str, list[list[Any]]] = field(default_factory=dict)
    five_minute: dict[str, list[list[Any]]] = field(default_factory=dict)

    @classmethod
    def recorded(cls) -> BinanceData:
        symbols = ("BTCUSDT", "ETHUSDT")
        return cls(
            {s: load_klines(s, "1h") for s in symbols},
            {s: load_klines(s, "5m") for s in symbols},
        )

    def klines(self, symbol: str, start_ms: int, limit: int, as_of_ms: int) -> list[list[Any]]:
        rows = [k for k in self.hourly[symbol] if k[0] >= start_ms and k[6] < as_of_ms]
        forming = self.forming(symbol, as_of_ms)
        if forming is not None and forming[0] >= start_ms:
            rows.append(forming)
        return rows[:limit]

    def forming(self, symbol: str, as_of_ms: int) -> list[Any] | None:
        hour = as_of_ms - as_of_ms % HOUR_MS
        parts = [k for k in self.five_minute[symbol] if hour <= k[0] <= as_of_ms]
        if not parts:
            return None
        values = [kline_bar(k) for k in parts]
        high = max(v[2] for v in values)
        low = min(v[3] for v in values)
        volume = sum(v[5] for v in values)
        prices = [f"{x:.8f}" for x in (values[0][1], high, low, values[-1][4], volume)]
        return [hour, *prices, hour + HOUR_MS - 1, "0.00000000", 0, "0.00000000", "0.00000000", "0"]

    def closed_bars(self, symbol: str) -> list[tuple[int, float, float, float, float, float]]:
        return [kline_bar(k) for k in self.hourly[symbol]]


@dataclass
class Request:
    path: str
    params: dict[str, str]


class FakeBinance:
    """The server's state: its data, its clock, queued faults, the requests seen."""

    def __init__(self, data: BinanceData, as_of_ms: int) -> None:
        self.data = data
        self.as_of_ms = as_of_ms
        self.faults: deque[int | str] = deque()
        self.planned: dict[int, int | str] = {}  # kline request number (from 1) -> fault
        self.markets_refused = False  # exchangeInfo answers 401, as for a refused API key
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.exchange_info = json.loads((FIXTURES / "exchangeInfo.json").read_text())
        self.url = ""

    def fail_next(self, *faults: int | str) -> None:
        with self.lock:
            self.faults.extend(faults)

    def fail_requests(self, plan: dict[int, int | str]) -> None:
        """Faults for given kline requests, by number (the first is 1)."""
        with self.lock:
            self.planned.update(plan)

    def kline_requests(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == "/api/v3/klines"]

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, Any] | str:
        """(status, JSON body), or "close" to drop the connection."""
        with self.lock:
            self.requests.append(Request(path, params))
            fault = self._fault(path)
            if fault is not None:
                return fault if isinstance(fault, str) else (fault, ERROR_BODIES[fault])
        if path == "/api/v3/exchangeInfo" and self.markets_refused:
            return 401, ERROR_BODIES[401]
        if path == "/api/v3/exchangeInfo":
            return 200, {**self.exchange_info, "serverTime": self.as_of_ms}
        if path == "/api/v3/klines":
            return self._klines(params)
        return 404, {"code": -1, "msg": f"no route {path} in the fake server"}

    def _fault(self, path: str) -> int | str | None:
        if path != "/api/v3/klines":
            return None
        number = sum(1 for r in self.requests if r.path == path)
        if number in self.planned:
            return self.planned[number]
        return self.faults.popleft() if self.faults else None

    def _klines(self, params: dict[str, str]) -> tuple[int, Any]:
        symbol = params.get("symbol", "")
        if symbol not in self.data.hourly:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if params.get("interval") not in INTERVAL_MS:
            return 400, {"code": -1120, "msg": "Invalid interval."}
        limit = min(int(params.get("limit", 500)), 1000)
        start = int(params.get("startTime", 0))
        return 200, self.data.klines(symbol, start, limit, self.as_of_ms)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        result = self.server.fake.answer(parts.path, params)
        if result == "close":
            self.close_connection = True
            self.connection.shutdown(2)  # no status line: the client sees a dropped connection
            return
        status, body = result  # type: ignore[misc]
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        if status == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read fake.requests


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeBinance) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


@contextmanager
def running_binance(as_of_ms: int, data: BinanceData | None = None) -> Iterator[FakeBinance]:
    """A fake Binance on a free port of 127.0.0.1; ``fake.url`` is its base URL."""
    fake = FakeBinance(data or BinanceData.recorded(), as_of_ms)
    server = _Server(fake)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-binance", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
