"""The composition root: start reads like a list of steps, stop is the same
list reversed (an ``AsyncExitStack``), every loop is a named task in one
``TaskGroup``. Signal handlers only set the stop event; a second SIGINT
forces the exit.

Crash-only: the data dir is locked first (one daemon per dir); every loop
runs watched (``runtime.liveness``): a loop that raises or returns before the
stop ends the process (exit 1, and ``runtime.failsafe`` makes sure it does),
a loop that stalls makes the daemon not ready and stops the watchdog pings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import uvloop

from quantum_daemon import __version__
from quantum_daemon.domain.config import Config, redactor
from quantum_daemon.domain.errors import EX_FAILURE, EX_INTERRUPTED, FatalError
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference import InferenceService
from quantum_daemon.ingest import IngestMetrics, IngestService
from quantum_daemon.lifecycle.service import LifecycleService
from quantum_daemon.push import WebhookService
from quantum_daemon.runtime.failsafe import FailsafeExit
from quantum_daemon.runtime.heartbeat import heartbeat_loop, loop_lag_monitor, watchdog_loop
from quantum_daemon.runtime.instance_lock import InstanceLock, InstanceLocked
from quantum_daemon.runtime.liveness import Liveness, LoopDied, running
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.runtime.ownership import Series, SeriesOwnership
from quantum_daemon.runtime.redis_link import RedisLink
from quantum_daemon.runtime.sdnotify import Notifier
from quantum_daemon.runtime.telemetry import DaemonMetrics
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.web.api import ApiServer
from quantum_daemon.web.dashboard import Dashboard
from quantum_daemon.web.signal_stream import SignalStream

if TYPE_CHECKING:  # at run time imported only with [feed] enabled (it loads ccxt)
    from quantum_daemon.ingest.feed.service import FeedService

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
        "optuna",
    }
)

LoopFactory = Callable[[asyncio.Event], Coroutine[Any, Any, None]]

# After a loop died, what is left of the process gets grace_s plus this to end
# by itself before the failsafe ends it.
FAILSAFE_MARGIN_S = 10.0


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
        self.liveness = Liveness()
        self.failsafe = FailsafeExit()
        self._sigint_count = 0
        self.link: RedisLink | None = None
        self.ownership: SeriesOwnership | None = None
        self.store: BarStore | None = None
        self.ingest: IngestService | None = None
        self.feed: FeedService | None = None
        self.lifecycle: LifecycleService | None = None
        self.inference: InferenceService | None = None
        self.api: ApiServer | None = None
        self.webhooks: WebhookService | None = None
        self.signal_stream = SignalStream(cfg.redis, cfg.api, self.keys, redactor(cfg))

    # -- lifecycle -------------------------------------------------------
    async def run(self) -> int:
        self._install_signal_handlers()
        log.info("daemon.starting", version=__version__, pid=os.getpid())
        async with contextlib.AsyncExitStack() as stack:
            self._prepare_data_dir()
            stack.enter_context(InstanceLock(self.cfg.storage.data_dir))
            self.link = await stack.enter_async_context(RedisLink(self.cfg.redis, self.metrics))
            self.ownership = SeriesOwnership.of(self.cfg, self.link.client)
            stack.push_async_callback(self.ownership.leave)  # after ingest stopped
            self.store = stack.enter_context(BarStore.in_dir(self.cfg.storage.data_dir))
            self.ingest = await stack.enter_async_context(self._ingest_service())
            if self.cfg.feed.enabled:
                self.feed = await stack.enter_async_context(self._feed_service())
            self.lifecycle = await stack.enter_async_context(self._lifecycle_service())
            self.inference = await stack.enter_async_context(self._inference_service())
            if self.cfg.webhooks.enabled:
                self.webhooks = await stack.enter_async_context(self._webhook_service())
            self.api = await stack.enter_async_context(self._api_server())
            self._register_ownership()
            self._register_core_loops()
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._watched(name, factory), name=name)
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

    async def _watched(self, name: str, factory: LoopFactory) -> None:
        """Run one loop with its pulse; its death (raising, or returning
        while the daemon runs) ends the process."""
        with running(self.liveness.watch(name, self.cfg.daemon.stall_s)):
            try:
                await factory(self.stop)
            except Exception as exc:
                self._loop_died(name, f"raised {exc!r}", exc)
                raise
        if not self.stop.is_set():
            self._loop_died(name, "returned while the daemon was running", None)
            raise LoopDied(f"loop {name} returned while the daemon was running")

    def _loop_died(self, name: str, why: str, exc: BaseException | None) -> None:
        self.liveness.ended(name, why)
        log.error("liveness.died", loop=name, why=why, exc_info=exc)
        # A fatal error keeps its own code (78 for a Redis permission): systemd
        # must not restart what a restart cannot fix.
        code = exc.exit_code if isinstance(exc, FatalError) else EX_FAILURE
        # Every loop also ends on stop: the cancellation the task group sends
        # alone can be lost (Python 3.11's wait_for, which redis-py sends under,
        # swallows a cancel that races the send's completion).
        self.stop.set()
        self.failsafe.arm(self.cfg.daemon.grace_s + FAILSAFE_MARGIN_S, code, f"loop {name} {why}")

    def _ingest_service(self) -> IngestService:
        assert self.link is not None and self.store is not None
        service = IngestService(
            self.cfg,
            self.link.client,
            self.store,
            IngestMetrics(self.metrics.registry),
            owned_only=True,
        )
        self.loops["ingest"] = service.run
        self.status_sections["ingest"] = service.status
        return service

    def _register_ownership(self) -> None:
        """Series ownership (runtime.ownership): ingest reads, inference
        publishes and control applies only what this daemon owns."""
        assert self.ownership is not None and self.ingest is not None
        ownership, ingest = self.ownership, self.ingest

        async def changed(gained: list[Series], lost: list[Series]) -> None:
            ingest.give_up(lost)
            await ingest.take_over(gained)

        self.loops["ownership"] = lambda stop: ownership.run(stop, ingest.candidate_series, changed)
        self.status_sections["ownership"] = ownership.status
        if self.inference is not None:
            self.inference.server.fence = ownership.fence
        if self.lifecycle is not None:
            self.lifecycle.control.inbox = self.keys.control_inbox(ownership.instance)
            self.lifecycle.control.route = lambda command: ownership.forward_to(command.model_id)

    def _feed_service(self) -> FeedService:
        # Imported here: ccxt (the feed extra) loads only when the feed is on.
        from quantum_daemon.ingest.feed.service import FeedService

        assert self.link is not None and self.store is not None
        service = FeedService(self.cfg, self.link.client, self.store.last_ts, self.metrics.registry)
        self.loops["feed"] = service.run
        self.status_sections["feed"] = service.status
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

    def _webhook_service(self) -> WebhookService:
        assert self.link is not None
        service = WebhookService(
            self.cfg, self.link.client, self.metrics.registry, redactor(self.cfg)
        )
        self.loops.update(service.loops())
        self.status_sections["webhooks"] = service.status
        return service

    def _api_server(self) -> ApiServer:
        self.status_sections["signal_stream"] = self.signal_stream.status
        return ApiServer(
            self.cfg.api,
            self,
            self._extra_routes(),
            redactor(self.cfg),
            on_shutdown=[self.signal_stream.close],
        )

    def _register_core_loops(self) -> None:
        assert self.link is not None
        link = self.link
        self.loops["redis-watch"] = link.watch
        self.loops["heartbeat"] = lambda stop: heartbeat_loop(
            stop,
            link,
            self.keys.heartbeat,
            self.cfg.daemon,
            lambda: self.readiness()[0],
            own_key=self.keys.heartbeat_of(self.ownership.instance) if self.ownership else None,
            describe=self._heartbeat_fields,
        )
        self.loops["watchdog"] = lambda stop: watchdog_loop(
            stop,
            self.notifier,
            lambda: not self.liveness.check(),
            self.cfg.daemon.heartbeat_interval_s,
        )
        self.loops["loop-lag"] = lambda stop: loop_lag_monitor(
            stop, self.metrics.observe_lag, self.cfg.daemon.loop_lag_warn_ms
        )

    def _heartbeat_fields(self) -> dict[str, Any]:
        if self.ownership is None:
            return {}
        return {
            "instance": self.ownership.instance,
            "api_port": self.api.port if self.api else None,
            "owned": [f"{s}:{t}" for s, t in self.ownership.owned()],
        }

    def _extra_routes(self) -> list[Any]:
        routes: list[Any] = self.signal_stream.routes()
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
        alive, why = self.alive()
        if not alive:
            return False, why
        if self.stop.is_set():
            return False, "stopping"
        if self.link is None or not self.link.up:
            error = self.link.last_error if self.link else "no connection"
            return False, f"redis unreachable: {error}"
        if self.store is not None and self.store.write_fault:
            return False, f"bar store cannot write: {self.store.write_fault}"
        if self.inference is not None and self.inference.link.trouble:
            return False, f"inference worker: {self.inference.link.trouble}"
        return True, "ok"

    def alive(self) -> tuple[bool, str]:
        """False with the loops' names when a loop died or stalled (``/healthz``)."""
        problems = self.liveness.problems()
        return not problems, "; ".join(map(str, problems)) or "ok"

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
                "url": redactor(self.cfg)(self.cfg.redis.url),
                "up": bool(self.link and self.link.up),
            },
            "heavy_modules_loaded": sorted(HEAVY_MODULES & sys.modules.keys()),
            "loops": self.liveness.snapshot(),
        }
        for name, section in self.status_sections.items():
            body[name] = section()
        return body

    def metrics_text(self) -> bytes:
        self.metrics.ready.set(1 if self.readiness()[0] else 0)
        return self.metrics.render()


def run_daemon(cfg: Config) -> int:
    """Run the daemon on uvloop until it stops; return the exit code."""
    try:
        return uvloop.run(Daemon(cfg).run())
    except InstanceLocked as exc:
        log.error("daemon.locked", error=str(exc), exit_code=exc.exit_code)
        print(f"quantum-daemon: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        errors = _leaves(exc)
        for error in errors:
            log.error("daemon.crashed", error=repr(error), exc_info=error)
        fatal = [e.exit_code for e in errors if isinstance(e, FatalError)]
        return fatal[0] if fatal else EX_FAILURE


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
