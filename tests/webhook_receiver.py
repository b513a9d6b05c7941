"""A real webhook receiver on 127.0.0.1 for the tests: an aiohttp app in a
thread of its own, recording every delivery and checking its signature the
way docs/push.md tells a receiver to (hmac + hashlib, not our code).

``answers`` is the status of each request in turn (the last one repeats);
``hang=True`` makes it accept requests and never answer them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    signature_ok: bool

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def signature_ok(secret: str, headers: dict[str, str], body: bytes) -> bool:
    timestamp = headers.get("X-Quantum-Timestamp", "")
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    given = headers.get("X-Quantum-Signature", "")
    return hmac.compare_digest("sha256=" + expected.hexdigest(), given)


@dataclass
class Receiver:
    secret: str
    answers: tuple[int, ...] = (200,)
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> Receiver:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        assert self._thread is not None
        self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _hook(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        self.received.append(Received(headers, body, signature_ok(self.secret, headers, body)))
        if self.hang:
            assert self._stop is not None
            await self._stop.wait()
        status = self.answers[min(len(self.received), len(self.answers)) - 1]
        return web.Response(status=status)

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= n:
                return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.received)} deliveries, not {n}")
