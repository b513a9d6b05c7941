"""Series ownership between daemons that share one Redis (docs/scaling.md,
"Ownership").

Each series (symbol, timeframe) has a lease ``{prefix}:owner:{SYMBOL}:{TF}``
whose value is ``{instance} {token}``: the owning daemon and a fencing token
drawn from ``{prefix}:owner:fence`` (``INCR``) when the lease was taken. A
lease is taken with ``SET NX PX`` (inside a script, with its token), renewed
by its holder with a compare-and-extend script, released with a
compare-and-delete one; nobody but the holder can extend or delete it. The
writes that must come from the owner only (signals) carry the value and are
refused by Redis when it is not the current lease (``inference.fenced``).

The holder counts a lease as held only until ``lease_s`` after it *sent*
the command that set or renewed it, less a margin: Redis started the TTL
later than that, so the holder stops acting on a series before anybody else
can take it over.

Live daemons register in the sorted set ``{prefix}:daemon:instances``
(scored by when their registration expires, in Redis' own clock). A daemon
claims unowned series up to its fair share, ``ceil(series / live daemons)``,
in an order of its own (rendezvous hashing of instance and series, so that
daemons starting together want different series). A series changes owner
only when its lease expires (its owner died or stalled for ``lease_s``) or
its owner releases it (a graceful stop, an operator's move): a daemon never
takes a live lease. One daemon alone owns every series. A lease found
under this daemon's own instance name was left by its previous life (the
data dir's lock allows one daemon per dir): a restart takes it at once.

An operator moves a series with ``quantum-daemon owners move SYMBOL:TF
INSTANCE``, which writes the wish into the hash ``{prefix}:owner:moves``.
At its next tick the owner releases the series (when the target is live),
no other daemon claims it, and the target claims it whatever its share, then
deletes the wish.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.keys import Keys
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.liveness import beat
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

Series = tuple[str, str]
# Called by the ownership loop after a tick with (gained, lost) series; the
# hook loads a gained series' history before it returns (ingest.takeover).
OwnershipHook = Callable[[list[Series], list[Series]], Awaitable[None]]

RENEWALS_PER_LEASE = 3
CANDIDATE_POLL_S = 0.2  # how often new candidates (a stream discovered) are looked for
SAFETY_MARGIN = 0.2  # of lease_s: clock rate differences, the reply's way back

# KEYS[1] lease, KEYS[2] fence counter; ARGV[1] instance, ARGV[2] ttl ms. A
# lease under this daemon's own name is its previous life's (one daemon per
# data dir, and the name is per data dir): a restart takes it at once.
CLAIM_LUA = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return false end
local value = ARGV[1] .. ' ' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""
# KEYS[1] lease; ARGV[1] value held, ARGV[2] ttl ms.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1] instances zset; ARGV[1] instance, ARGV[2] ttl ms ('0': leave). The
# server's clock scores every registration, so hosts' clocks do not matter.
REGISTER_LUA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def default_instance(data_dir: Path) -> str:
    """``{host}-{digest of the data dir}``: stable across restarts, and two
    daemons of one host (each has its own data dir) get different names."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return f"{host[:40] or 'host'}-{digest}"


def instance_of(cfg: Config) -> str:
    return cfg.daemon.instance or default_instance(cfg.storage.data_dir)


def fair_share(series: int, live: int) -> int:
    return math.ceil(series / max(1, live))


def preference(instance: str, series: Series) -> str:
    """Rendezvous hashing: each daemon's own order over the series."""
    return hashlib.sha256(f"{instance}|{series[0]}|{series[1]}".encode()).hexdigest()


@dataclass
class Lease:
    value: str  # "{instance} {token}", what the fenced writes carry
    valid_until: float  # monotonic seconds; after it, act no more on the series


@dataclass
class OwnershipTotals:
    claimed: int = 0
    renewed: int = 0
    lost: int = 0
    released: int = 0


@dataclass
class SeriesOwnership:
    """This daemon's leases; ``run`` keeps them (see the module docstring)."""

    client: aioredis.Redis
    keys: Keys
    instance: str
    lease_s: float = 15.0
    settle_s: float = 0.0
    held: dict[Series, Lease] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)
    totals: OwnershipTotals = field(default_factory=OwnershipTotals)

    @classmethod
    def of(cls, cfg: Config, client: aioredis.Redis) -> SeriesOwnership:
        return cls(
            client,
            Keys(cfg.redis.prefix),
            instance_of(cfg),
            cfg.daemon.lease_s,
            cfg.daemon.settle_s,
        )

    @property
    def ttl_ms(self) -> int:
        return int(self.lease_s * 1000)

    @property
    def renew_s(self) -> float:
        return self.lease_s / RENEWALS_PER_LEASE

    # -- what the rest of the daemon asks ------------------------------------

    def owns(self, series: Series) -> bool:
        lease = self.held.get(series)
        return lease is not None and time.monotonic() < lease.valid_until

    def fence(self, series: Series) -> str | None:
        """The lease value for a fenced write, or None when not (surely) owned."""
        return self.held[series].value if self.owns(series) else None

    def owned(self) -> list[Series]:
        return sorted(s for s in self.held if self.owns(s))

    async def owner_of(self, series: Series) -> str | None:
        """The instance that holds the series' lease now, if any."""
        value = await self.client.get(self.keys.owner(*series))
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text.rpartition(" ")[0] or None

    async def forward_to(self, model_id: str) -> str | None:
        """The other daemon that owns the series of ``model_id``, if one
        does (a control command for it goes there); None: act here."""
        try:
            key = ModelKey.parse(model_id)
        except ValueError:
            return None
        series = (key.symbol, key.tf)
        if self.owns(series):
            return None
        owner = await self.owner_of(series)
        return owner if owner not in (None, self.instance) else None

    # -- one tick ------------------------------------------------------------

    async def register(self) -> list[str]:
        reply = await self.client.eval(
            REGISTER_LUA, 1, self.keys.instances, self.instance, self.ttl_ms
        )
        self.live = sorted(_text(v) for v in reply)
        return self.live

    async def renew(self) -> list[Series]:
        """Extend every lease held; the series whose lease is gone are lost."""
        lost: list[Series] = []
        for series, lease in list(self.held.items()):
            sent = time.monotonic()
            kept = await self.client.eval(
                RENEW_LUA, 1, self.keys.owner(*series), lease.value, self.ttl_ms
            )
            # The value is unique (its token), so finding it proves that
            # nobody held the series since: the lease goes on.
            if kept:
                lease.valid_until = self._deadline(sent)
                self.totals.renewed += 1
            else:
                del self.held[series]
                lost.append(series)
                self.totals.lost += 1
                log.warning("ownership.lost", symbol=series[0], tf=series[1], lease=lease.value)
        return lost

    async def moves(self) -> dict[Series, str]:
        """Operators' wishes whose target is a live daemon: series -> instance."""
        raw = await self.client.hgetall(self.keys.owner_moves)
        wishes: dict[Series, str] = {}
        for name, target in raw.items():
            symbol, _, tf = _text(name).partition(":")
            if symbol and tf and _text(target) in self.live:
                wishes[(symbol, tf)] = _text(target)
        return wishes

    async def hand_over(self, moves: dict[Series, str]) -> list[Series]:
        """Release the series an operator moves to another live daemon."""
        going = [s for s, target in moves.items() if target != self.instance and s in self.held]
        await self.release(going)
        return going

    async def claim(
        self, candidates: Iterable[Series], moves: dict[Series, str] | None = None
    ) -> list[Series]:
        """Take the series moved to this daemon, then unowned candidates in
        this daemon's order up to its share (none that is moved elsewhere)."""
        moves = moves or {}
        mine = sorted(s for s, target in moves.items() if target == self.instance)
        gained = [s for s in mine if s not in self.held and await self._take(s)]
        for series in gained:
            await self.client.hdel(self.keys.owner_moves, f"{series[0]}:{series[1]}")
        wanted = sorted(
            (s for s in set(candidates) if s not in moves),
            key=lambda s: preference(self.instance, s),
        )
        share = fair_share(len(set(candidates)), len(self.live))
        for series in wanted:
            if len(self.held) >= share:
                break
            if series not in self.held and await self._take(series):
                gained.append(series)
        return gained

    async def _take(self, series: Series) -> bool:
        """Take the series' lease if nobody holds it."""
        sent = time.monotonic()
        value = await self.client.eval(
            CLAIM_LUA,
            2,
            self.keys.owner(*series),
            self.keys.owner_fence,
            self.instance,
            self.ttl_ms,
        )
        if value is None:
            return False
        self.held[series] = Lease(_text(value), self._deadline(sent))
        self.totals.claimed += 1
        log.info("ownership.claimed", symbol=series[0], tf=series[1], lease=_text(value))
        return True

    async def release(self, series: Sequence[Series]) -> None:
        for one in series:
            lease = self.held.pop(one, None)
            if lease is not None:
                await self._release(one, lease)

    async def leave(self) -> None:
        """Release every lease and the registration (a graceful stop)."""
        try:
            await self.release(list(self.held))
            await self.client.eval(REGISTER_LUA, 1, self.keys.instances, self.instance, "0")
        except (RedisError, OSError) as exc:
            log.warning("ownership.leave_failed", error=str(exc))

    async def _release(self, series: Series, lease: Lease) -> None:
        await self.client.eval(RELEASE_LUA, 1, self.keys.owner(*series), lease.value)
        self.totals.released += 1
        log.info("ownership.released", symbol=series[0], tf=series[1], lease=lease.value)

    def _deadline(self, sent: float) -> float:
        return sent + self.lease_s * (1.0 - SAFETY_MARGIN)

    # -- the loop ------------------------------------------------------------

    async def tick(self, candidates: Iterable[Series]) -> tuple[list[Series], list[Series]]:
        await self.register()
        lost = await self.renew()
        moves = await self.moves()
        lost += await self.hand_over(moves)
        gained = await self.claim(candidates, moves)
        return gained, lost

    async def run(
        self,
        stop: asyncio.Event,
        candidates: Callable[[], Iterable[Series]],
        on_change: OwnershipHook,
    ) -> None:
        """Register, wait ``settle_s`` for peers starting too, then every
        ``lease_s / 3`` (and at once when new candidates appear): renew,
        claim, and hand the changes to ``on_change``. The changes are applied
        by a task of their own, so that a long history load never holds up
        a renewal."""
        changes: asyncio.Queue[tuple[list[Series], list[Series]] | None] = asyncio.Queue()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_apply(changes, on_change), name="ownership-apply")
            try:
                await self._keep(stop, candidates, changes)
            finally:
                changes.put_nowait(None)

    async def _keep(
        self,
        stop: asyncio.Event,
        candidates: Callable[[], Iterable[Series]],
        changes: asyncio.Queue[tuple[list[Series], list[Series]] | None],
    ) -> None:
        await self._settle(stop)
        while not stop.is_set():
            beat()
            seen = set(candidates())
            try:
                gained, lost = await self.tick(seen)
                if gained or lost:
                    changes.put_nowait((gained, lost))
            except (RedisError, OSError) as exc:
                log.warning("ownership.redis_error", error=str(exc))
            await self._wait(stop, candidates, seen)

    async def _settle(self, stop: asyncio.Event) -> None:
        """Stay registered for ``settle_s`` before the first claim, so that
        peers starting meanwhile are counted in the fair share."""
        deadline = time.monotonic() + self.settle_s
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            beat()
            with contextlib.suppress(RedisError, OSError):
                await self.register()
            await sleep_or_stop(stop, min(left, self.renew_s))

    async def _wait(
        self, stop: asyncio.Event, candidates: Callable[[], Iterable[Series]], seen: set[Series]
    ) -> None:
        """Until the next renewal, or sooner when new candidates appear."""
        deadline = time.monotonic() + self.renew_s
        while not stop.is_set() and time.monotonic() < deadline:
            if not set(candidates()) <= seen:
                return
            await sleep_or_stop(stop, min(CANDIDATE_POLL_S, self.renew_s))

    def status(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "lease_s": self.lease_s,
            "live_instances": self.live,
            "owned": [f"{s}:{t}" for s, t in self.owned()],
            "totals": vars(self.totals).copy(),
        }


async def _apply(
    changes: asyncio.Queue[tuple[list[Series], list[Series]] | None], on_change: OwnershipHook
) -> None:
    """Apply each change; one that Redis failed is applied again (taking
    over and giving up are idempotent) until it went through."""
    while (item := await changes.get()) is not None:
        backoff = Backoff(cap=5.0)
        while True:
            try:
                await on_change(*item)
                break
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("ownership.change_failed", error=str(exc), retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
