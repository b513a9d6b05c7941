"""Webhooks as one daemon step (docs/push.md): the lifecycle events of
``quantum:events``, signed and POSTed to every configured URL.

One supervised loop (``webhooks``) runs a reader per URL (``push.target``)
over one aiohttp session; nothing of it runs on the ingest or inference
path, and a dead or slow receiver only fills its own URL's delivery slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.secrets import Redactor
from quantum_daemon.push.delivery import USER_AGENT, Poster
from quantum_daemon.push.metrics import WebhookMetrics
from quantum_daemon.push.target import Target
from quantum_daemon.runtime.consumers import consumer_name
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

LoopFactory = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class WebhookService:
    """Owns the HTTP session and one ``Target`` per URL."""

    def __init__(
        self,
        cfg: Config,
        client: aioredis.Redis,
        registry: CollectorRegistry,
        redact: Redactor,
        consumer: str | None = None,
    ) -> None:
        self.cfg = cfg.webhooks
        self.client = client
        self.keys = Keys(cfg.redis.prefix)
        self.metrics = WebhookMetrics(registry)
        self.redact = redact
        self.consumer = consumer or consumer_name()
        self.session: aiohttp.ClientSession | None = None
        self.targets: list[Target] = []

    async def __aenter__(self) -> WebhookService:
        limit = self.cfg.max_in_flight * len(self.cfg.urls)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit),
            headers={"User-Agent": USER_AGENT},
        )
        poster = Poster(self.session, self.cfg)
        self.targets = [
            Target(
                url,
                self.cfg,
                self.client,
                self.keys,
                self.consumer,
                poster,
                self.metrics,
                self.redact,
            )
            for url in self.cfg.urls
        ]
        log.info("webhooks.started", urls=[t.shown_url for t in self.targets],
                 event_types=list(self.cfg.event_types))  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def loops(self) -> dict[str, LoopFactory]:
        return {"webhooks": self.run}

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for target in self.targets:
                tg.create_task(target.run(stop), name=f"webhook-target-{target.name}")

    def status(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "event_types": list(self.cfg.event_types),
            "targets": [t.status() for t in self.targets],
        }
