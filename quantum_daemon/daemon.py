"""The composition root: start reads like a list of steps, stop is the same
list reversed (an ``AsyncExitStack``), every loop is a named task in one
``TaskGroup``. Signal handlers only set the stop event; a second SIGINT
forces the exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvloop

from quantum_daemon import __version__
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.errors import EX_FAILURE, EX_INTERRUPTED
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference import InferenceService
from quantum_daemon.ingest import IngestMetrics, IngestService
from quantum_daemon.lifecycle.service import LifecycleService
from quantum_daemon.runtime.heartbeat import heartbeat_loop, loop_lag_monitor
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.redis_link import RedisLink
from quantum_daemon.runtime.sdnotify import Notifier
from quantum_daemon.runtime.telemetry import DaemonMetrics
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.web.api import ApiServer
from quantum_daemon.web.dashboard import Dashboard

log = get_logger()

# Model libraries that must never load in the daemon process (DESIGN §7;
# tests/test_layering.py imports the daemon and every command and checks).
HEAVY_MODULES = frozenset(
    {
        "torch",
        "xgboost",
        "lightgbm",
        "ray",
        "talib",
        "gymnasium",
        "cma",
        "stable_baselines3",
        "sklearn",
        "matplotlib",
    }
)

LoopFactory = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.keys = Keys(cfg.redis.prefix)
        self.metrics = DaemonMetrics()
        self.notifier = Notifier()
        self.stop = asyncio.Event()
        self.started = False
        self.started_at = time.time()
        self.loops: dict[str, LoopFactory] = {}
        self.status_sections: dict[str, Callable[[], dict[str, Any]]] = {}
        self._sigint_count = 0
        self.link: RedisLink | None = None
        self.store: BarStore | None = None
        self.ingest: IngestService | None = None
        self.lifecycle: LifecycleService | None = None
        self.inference: InferenceService | None = None
        self.api: ApiServer | None = None

    # -- lifecycle -------------------------------------------------------
    async def run(self) -> int:
        self._install_signal_handlers()
        log.info("daemon.starting", version=__version__, pid=os.getpid())
        async with contextlib.AsyncExitStack() as stack:
            self._prepare_data_dir()
            self.link = await stack.enter_async_context(RedisLink(self.cfg.redis, self.metrics))
            self.store = stack.enter_context(BarStore.in_dir(self.cfg.storage.data_dir))
            self.ingest = await stack.enter_async_context(self._ingest_service())
            self.lifecycle = await stack.enter_async_context(self._lifecycle_service())
            self.inference = await stack.enter_async_context(self._inference_service())
            self.api = await stack.enter_async_context(
                ApiServer(self.cfg.api, self, self._extra_routes())
            )
            self._register_core_loops()
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(factory(self.stop), name=name)
                    for name, factory in self.loops.items()
                ]
                self._announce_ready()
                await self.stop.wait()
                await self._drain(tasks)
            log.info("daemon.closing")
        log.info("daemon.stopped", uptime_s=round(time.time() - self.started_at, 3))
        self.notifier.close()
        return 0

    def _prepare_data_dir(self) -> None:
        self.cfg.storage.data_dir.mkdir(parents=True, exist_ok=True)

    def _ingest_service(self) -> IngestService:
        assert self.link is not None and self.store is not None
        service = IngestService(
            self.cfg, self.link.client, self.store, IngestMetrics(self.metrics.registry)
        )
        self.loops["ingest"] = service.run
        self.status_sections["ingest"] = service.status
        return service

    def _lifecycle_service(self) -> LifecycleService:
        assert self.link is not None and self.store is not None and self.ingest is not None
        service = LifecycleService(self.cfg, self.link.client, self.store, self.metrics.registry)
        self.ingest.on_stored.append(service.on_bars_stored)
        self.loops.update(service.loops())
        self.status_sections["lifecycle"] = service.status
        return service

    def _inference_service(self) -> InferenceService:
        assert self.link is not None and self.store is not None and self.ingest is not None
        service = InferenceService(
            self.cfg, self.link.client, self.store, self.metrics.registry, lifecycle=self.lifecycle
        )
        self.ingest.on_stored.append(service.bars_stored)
        self.loops.update(service.loops())
        self.status_sections["inference"] = service.status
        return service

    def _register_core_loops(self) -> None:
        assert self.link is not None
        link = self.link
        self.loops["redis-watch"] = link.watch
        self.loops["heartbeat"] = lambda stop: heartbeat_loop(
            stop,
            link,
            self.keys.heartbeat,
            self.cfg.daemon,
            self.notifier,
            lambda: self.readiness()[0],
        )
        self.loops["loop-lag"] = lambda stop: loop_lag_monitor(
            stop, self.metrics.observe_lag, self.cfg.daemon.loop_lag_warn_ms
        )

    def _extra_routes(self) -> list[Any]:
        routes: list[Any] = []
        if self.lifecycle is not None:
            routes += self.lifecycle.routes()
        if self.inference is not None:
            routes += self.inference.routes()
        if self.link is not None:
            routes += Dashboard(self.link.client, self.keys, self.cfg.storage.data_dir).routes()
        return routes

    def _announce_ready(self) -> None:
        self.started = True
        ready, reason = self.readiness()
        self.metrics.ready.set(1 if ready else 0)
        self.notifier.ready(status="ready" if ready else f"started, not ready: {reason}")
        log.info(
            "daemon.ready",
            api_port=self.api.port if self.api else None,
            redis_up=ready,
            reason=reason,
        )

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop intake (the event is set), give loops ``grace_s`` to finish,
        then cancel what is left."""
        grace = self.cfg.daemon.grace_s
        log.info("daemon.stopping", grace_s=grace)
        self.notifier.stopping()
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            log.warning("daemon.cancelling", task=task.get_name())
            task.cancel(f"shutdown: grace period of {grace}s is over")

    # -- signals ---------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGINT:
            self._sigint_count += 1
            if self._sigint_count > 1:
                log.warning("daemon.forced_exit")
                os._exit(EX_INTERRUPTED)
        log.info("daemon.signal", signal=sig.name)
        self.stop.set()

    # -- StatusSource for the API ----------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self.started:
            return False, "starting"
        if self.stop.is_set():
            return False, "stopping"
        if self.link is None or not self.link.up:
            error = self.link.last_error if self.link else "no connection"
            return False, f"redis unreachable: {error}"
        return True, "ok"

    def status(self) -> dict[str, Any]:
        ready, reason = self.readiness()
        body: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 3),
            "ready": ready,
            "reason": reason,
            "redis": {
                "url": redact_url(self.cfg.redis.url),
                "up": bool(self.link and self.link.up),
            },
            "heavy_modules_loaded": sorted(HEAVY_MODULES & sys.modules.keys()),
        }
        for name, section in self.status_sections.items():
            body[name] = section()
        return body

    def metrics_text(self) -> bytes:
        self.metrics.ready.set(1 if self.readiness()[0] else 0)
        return self.metrics.render()


def redact_url(url: str) -> str:
    """The URL without its password (for logs and status)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def run_daemon(cfg: Config) -> int:
    """Run the daemon on uvloop until it stops; return the exit code."""
    try:
        return uvloop.run(Daemon(cfg).run())
    except Exception as exc:
        for error in _leaves(exc):
            log.error("daemon.crashed", error=repr(error), exc_info=error)
        return EX_FAILURE


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
