"""The HTTP surface (aiohttp): health, readiness, Prometheus metrics, JSON status.

Read-only routes are open on the configured interface (127.0.0.1 by default);
anything that changes state needs ``Authorization: Bearer <api token>``, and
is refused outright while no token is configured.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from quantum_daemon.domain.config import ApiConfig
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.web.responses import json_response

log = get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class StatusSource(Protocol):
    def readiness(self) -> tuple[bool, str]: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> bytes: ...


@dataclass
class ApiServer:
    """Runs the aiohttp app on host:port as an async context manager."""

    cfg: ApiConfig
    source: StatusSource
    extra_routes: Iterable[web.RouteDef] = ()
    runner: web.AppRunner | None = field(default=None, init=False)
    port: int = field(default=0, init=False)

    async def __aenter__(self) -> ApiServer:
        app = build_app(self.cfg, self.source, self.extra_routes)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        self.port = _bound_port(self.runner) or self.cfg.port
        log.info("api.listening", host=self.cfg.host, port=self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None


def build_app(
    cfg: ApiConfig, source: StatusSource, extra_routes: Iterable[web.RouteDef] = ()
) -> web.Application:
    app = web.Application(middlewares=[_token_middleware(cfg.token.reveal())])
    app.router.add_routes(
        [
            web.get("/healthz", _healthz),
            web.get("/readyz", _handler(lambda: _readyz(source))),
            web.get("/metrics", _handler(lambda: _metrics(source))),
            web.get("/api/status", _handler(lambda: json_response(source.status()))),
            *extra_routes,
        ]
    )
    return app


def _handler(make: Callable[[], web.StreamResponse]) -> Handler:
    async def handle(_: web.Request) -> web.StreamResponse:
        return make()

    return handle


async def _healthz(_: web.Request) -> web.StreamResponse:
    return json_response({"status": "alive"})


def _readyz(source: StatusSource) -> web.StreamResponse:
    ready, reason = source.readiness()
    body = {"ready": ready, "reason": reason}
    return json_response(body, status=200 if ready else 503)


def _metrics(source: StatusSource) -> web.StreamResponse:
    return web.Response(
        body=source.metrics_text(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def _token_middleware(token: str) -> Any:
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in SAFE_METHODS:
            return await handler(request)
        if not token:
            return json_response(
                {
                    "error": "state-changing API disabled: no api token configured "
                    "(set QUANTUM_API_TOKEN)"
                },
                status=403,
            )
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return json_response({"error": "missing or wrong bearer token"}, status=401)
        return await handler(request)

    return require_token
