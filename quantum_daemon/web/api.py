"""The HTTP surface (aiohttp): health, readiness, Prometheus metrics, JSON status.

Read-only routes are open on the configured interface (127.0.0.1 by default);
anything that changes state needs ``Authorization: Bearer <api token>``, and
is refused outright while no token is configured. Every body a route answers
(``/api/status``, ``/metrics``, the services' JSON, error texts) passes
through the process's redaction (``domain/secrets.py``) on its way out.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from quantum_daemon.domain.config import ApiConfig
from quantum_daemon.domain.secrets import Redactor
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.web.responses import json_response

log = get_logger()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ShutdownHook = Callable[[web.Application], Awaitable[None]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TEXT_TYPES = frozenset({"application/json", "application/javascript"})


class StatusSource(Protocol):
    def readiness(self) -> tuple[bool, str]: ...

    def alive(self) -> tuple[bool, str]: ...

    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> bytes: ...


@dataclass
class ApiServer:
    """Runs the aiohttp app on host:port as an async context manager."""

    cfg: ApiConfig
    source: StatusSource
    extra_routes: Iterable[web.RouteDef] = ()
    # The daemon passes the redaction of its whole config; alone, the API knows its token.
    redact: Redactor | None = None
    # run as the server shuts down, before it waits for the handlers (end long-lived streams)
    on_shutdown: Iterable[ShutdownHook] = ()
    runner: web.AppRunner | None = field(default=None, init=False)
    port: int = field(default=0, init=False)

    async def __aenter__(self) -> ApiServer:
        app = build_app(self.cfg, self.source, self.extra_routes, self.redact)
        app.on_shutdown.extend(self.on_shutdown)
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
    cfg: ApiConfig,
    source: StatusSource,
    extra_routes: Iterable[web.RouteDef] = (),
    redact: Redactor | None = None,
) -> web.Application:
    redact = redact or Redactor([cfg.token.reveal()])
    app = web.Application(
        middlewares=[_redacting_middleware(redact), _token_middleware(cfg.token.reveal())]
    )
    app.router.add_routes(
        [
            web.get("/healthz", _handler(lambda: _healthz(source))),
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


def _healthz(source: StatusSource) -> web.StreamResponse:
    """200 while every loop of the daemon is alive; 503 naming a loop that
    died or stalled (Redis being away is ``/readyz``'s business, not this)."""
    alive, reason = source.alive()
    if alive:
        return json_response({"status": "alive"})
    return json_response({"status": "not alive", "reason": reason}, status=503)


def _readyz(source: StatusSource) -> web.StreamResponse:
    ready, reason = source.readiness()
    body = {"ready": ready, "reason": reason}
    return json_response(body, status=200 if ready else 503)


def _metrics(source: StatusSource) -> web.StreamResponse:
    return web.Response(
        body=source.metrics_text(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


def _redacting_middleware(redact: Redactor) -> Any:
    """Every body leaves redacted: a whole response (JSON, metrics text, a
    page) or an HTTP error's text; a streamed response writes its own."""

    @web.middleware
    async def redact_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.text:
                exc.text = redact(exc.text)
            raise
        if isinstance(response, web.Response) and _is_text(response) and response.text:
            clean = redact(response.text)
            if clean != response.text:
                response.text = clean
        return response

    return redact_body


def _is_text(response: web.Response) -> bool:
    return isinstance(response.body, bytes) and (
        response.content_type.startswith("text/") or response.content_type in TEXT_TYPES
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
