"""One webhook delivery: signed POSTs with exponential backoff until the
receiver answers 2xx or the retry budget is spent.

An attempt that times out, cannot connect, or gets 408, 429 or a 5xx is
retried; any other answer (a 4xx: the receiver refuses this body) ends the
delivery at once. Each attempt is signed anew (its own timestamp) over the
same body, under the same delivery id.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from quantum_daemon.domain.config import WebhooksConfig
from quantum_daemon.domain.webhooks import delivery_headers
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff

RETRYABLE_STATUS = frozenset({408, 429})
USER_AGENT = "quantum-daemon-webhooks"


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: ``ok`` (2xx), or why not and whether to retry."""

    ok: bool
    retry: bool
    reason: str


@dataclass(frozen=True)
class Outcome:
    """A delivery's end: delivered, given up (``reason``), or left for the
    next start because the daemon stops (``stopped``)."""

    delivered: bool
    attempts: int
    reason: str
    stopped: bool = False


@dataclass(frozen=True)
class Delivery:
    """One event's body for one URL."""

    url: str
    event_type: str
    delivery_id: str
    body: bytes


class Poster:
    """Sends deliveries over one aiohttp session (one connection pool)."""

    def __init__(self, session: aiohttp.ClientSession, cfg: WebhooksConfig) -> None:
        self.session = session
        self.cfg = cfg
        self.secret = cfg.secret.reveal()
        self.timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)

    async def attempt(self, delivery: Delivery) -> Attempt:
        headers = delivery_headers(
            self.secret, delivery.event_type, delivery.delivery_id, int(time.time()), delivery.body
        )
        headers["User-Agent"] = USER_AGENT
        try:
            async with self.session.post(
                delivery.url,
                data=delivery.body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            ) as response:
                return _judged(response.status)
        except TimeoutError:
            return Attempt(False, True, f"timed out after {self.cfg.timeout_s:g}s")
        except aiohttp.ClientError as exc:
            return Attempt(False, True, f"{type(exc).__name__}: {exc}")

    async def deliver(self, delivery: Delivery, stop: asyncio.Event) -> Outcome:
        """Attempts until delivered, refused, the budget spent, or ``stop``."""
        backoff = Backoff(base=self.cfg.backoff_base_s, cap=self.cfg.backoff_max_s)
        budget = 1 + self.cfg.retries
        for number in range(1, budget + 1):
            attempt = await self.attempt(delivery)
            if attempt.ok:
                return Outcome(True, number, "")
            if not attempt.retry or number == budget:
                return Outcome(False, number, attempt.reason)
            if await sleep_or_stop(stop, backoff.next_delay()):
                return Outcome(False, number, attempt.reason, stopped=True)
        raise AssertionError("unreachable: the last attempt returns")


def _judged(status: int) -> Attempt:
    if 200 <= status < 300:
        return Attempt(True, False, "")
    retry = status >= 500 or status in RETRYABLE_STATUS
    return Attempt(False, retry, f"http {status}" + ("" if retry else " (not retried)"))
