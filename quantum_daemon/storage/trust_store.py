"""Trust memory in Redis (DESIGN §2, §6): weights, bounded history, update events.

Keys (``Keys``):

- ``quantum:trust:{family}``: string, the family's current weight; present
  exactly for the live families (their weights sum to one);
- ``quantum:trust:{family}:{SYMBOL}:{TF}``: string, the family's weight on
  one series, moved by that series' scores only (same rule, same round);
  present exactly for the live families of a series that was scored. With
  several daemons (docs/scaling.md) each series' keys are written by its
  owner alone, and ``quantum:trust:{family}`` stays the aggregate over all
  series that the original readers expect;
- ``quantum:trust:history``: hash, field per family -> JSON list of
  ``[round_ts, weight]`` pairs, the last ``[trust] history_len``;
- ``quantum:trust:events:{family}``: stream of the family's last 100 updates
  (exact ``MAXLEN``), one entry per score that moved it: the scored bar,
  model, version, loss, and the weight before and after the round;
- ``quantum:scoring:scored``: sorted set of the scores already applied,
  ``model|version|symbol|bar_ts`` scored by ``bar_ts``, kept for
  ``scored_retention_ms`` behind the newest; a score older than that window
  counts as applied, so a replayed bar never moves a weight twice.

One round (``apply``) is one optimistic transaction: ``WATCH`` the weights
and the scored set, read them, compute the new state with the pure
``plan_round`` (``trust.align`` then ``trust.update``), and write everything
in one ``MULTI``/``EXEC``; a concurrent writer makes it retry. The history
is appended to and trimmed by a small Lua script inside the same ``EXEC``, so
the daemon never parses it on the hot path. The per-series weights of the
round's series are watched, read and written in the same transaction: two
daemons scoring at once never overwrite each other's keys. Candidates' (shadow) scores are
marked as scored but never move a weight.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from quantum_daemon.core import trust
from quantum_daemon.domain.config import FAMILIES, TrustConfig
from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.timeframes import DAY_MS
from quantum_daemon.runtime.backoff import Backoff

EVENTS_MAXLEN = 100
DEFAULT_SCORED_RETENTION_MS = 90 * DAY_MS
MAX_ATTEMPTS = 20

# KEYS[1]: the history hash; ARGV[1]: history_len; then field, entry pairs.
# Each field holds a JSON list of "[ts,weight]" entries written without
# spaces, so "],[" separates entries: append one, drop the oldest beyond the limit.
APPEND_HISTORY_LUA = """
local limit = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  local list
  if (not old) or old == '[]' then
    list = '[' .. ARGV[i + 1] .. ']'
  else
    list = string.sub(old, 1, -2) .. ',' .. ARGV[i + 1] .. ']'
  end
  local _, separators = string.gsub(list, '%],%[', '')
  local count = separators + 1
  while count > limit do
    local cut = string.find(list, '],[', 1, true)
    list = '[' .. string.sub(list, cut + 2)
    count = count - 1
  end
  redis.call('HSET', KEYS[1], ARGV[i], list)
end
return 1
"""

History = dict[str, list[tuple[int, float]]]


class TrustConflict(RuntimeError):
    """Other writers kept changing the trust keys; the round was not applied."""


@dataclass(frozen=True)
class Score:
    """One scored prediction: ``loss`` in [0, 1] (see ``scoring``); ``bar_ts``
    is the open time of the bar the prediction was made at. ``shadow`` marks
    a candidate version's score."""

    family: str
    model: str
    version: str
    symbol: str
    bar_ts: int
    loss: float
    shadow: bool = False

    @property
    def member(self) -> str:
        return f"{self.model}|{self.version}|{self.symbol}|{self.bar_ts}"


@dataclass(frozen=True)
class StoredState:
    """What a round reads before it writes."""

    weights: Mapping[str, float]
    applied: frozenset[str]  # members of the round's scores already in the scored set
    newest_scored_ts: int | None


@dataclass(frozen=True)
class TrustRound:
    """What a round did: ``fresh`` scores were applied now, ``duplicates``
    had been before (or are older than the retention window)."""

    round_ts: int
    fresh: tuple[Score, ...]
    duplicates: tuple[Score, ...]
    losses: Mapping[str, float]
    before: Mapping[str, float]
    after: Mapping[str, float]
    changed: bool


@dataclass(frozen=True)
class RoundPlan:
    """Everything a round writes, computed without I/O."""

    round: TrustRound
    set_weights: Mapping[str, float]
    delete_families: tuple[str, ...]
    history: Mapping[str, tuple[int, float]]  # family -> entry to append
    events: tuple[tuple[str, dict[str, str]], ...]  # (family, fields)
    scored: Mapping[str, int]  # member -> bar_ts
    trim_scored_below: int | None
    series_weights: Mapping[str, float] = field(default_factory=dict)  # key -> weight
    series_deletes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrustEvent:
    """One entry of ``quantum:trust:events:{family}``."""

    id: str
    family: str
    bar_ts: int
    round_ts: int
    symbol: str
    model: str
    version: str
    loss: float
    round_loss: float
    weight_before: float
    weight_after: float


@dataclass(frozen=True)
class TrustSnapshot:
    """Weights, history and recent events, for ``/api/trust``."""

    weights: Mapping[str, float]
    history: History
    events: Mapping[str, list[TrustEvent]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "weights": dict(self.weights),
            "history": {f: [list(p) for p in h] for f, h in self.history.items()},
            "events": {f: [asdict(e) for e in evs] for f, evs in self.events.items()},
        }


def plan_round(
    state: StoredState,
    scores: Sequence[Score],
    live: Sequence[str],
    round_ts: int,
    config: TrustConfig,
    retention_ms: int = DEFAULT_SCORED_RETENTION_MS,
) -> RoundPlan:
    """The writes of one round (see the module docstring); pure."""
    fresh, duplicates = _split_fresh(scores, state, retention_ms)
    stored = dict(state.weights)
    before = trust.align(stored, live)
    moving = [s for s in fresh if not s.shadow and s.family in before]
    losses = _family_losses(moving)
    after = trust.update(before, losses, config.learning_rate, config.share)
    changed = after != stored
    history = {f: (round_ts, w) for f, w in after.items()} if changed else {}
    events = tuple((s.family, _event_fields(s, losses, before, after, round_ts)) for s in moving)
    return RoundPlan(
        round=TrustRound(round_ts, fresh, duplicates, losses, before, after, changed),
        set_weights=after if changed else {},
        delete_families=tuple(f for f in stored if f not in after),
        history=history,
        events=events,
        scored={s.member: s.bar_ts for s in fresh},
        trim_scored_below=_trim_floor(state, fresh, retention_ms),
    )


SeriesKey = Callable[[str, str, str], str]  # (family, symbol, tf) -> key


def series_of(score: Score) -> tuple[str, str] | None:
    """(symbol, tf) of the score's model, None for a name that is no model id."""
    try:
        key = ModelKey.parse(score.model)
    except ValueError:
        return None
    return key.symbol, key.tf


def plan_series(
    stored: Mapping[tuple[str, str], Mapping[str, float]],
    fresh: Sequence[Score],
    live: Sequence[str],
    config: TrustConfig,
    key_of: SeriesKey,
) -> tuple[dict[str, float], tuple[str, ...]]:
    """The per-series weights a round writes, and the keys it deletes: each
    scored series' weights moved by its own fresh scores only; pure."""
    by_series: dict[tuple[str, str], list[Score]] = {}
    for score in fresh:
        series = series_of(score)
        if series is not None and not score.shadow:
            by_series.setdefault(series, []).append(score)
    writes: dict[str, float] = {}
    deletes: list[str] = []
    for (symbol, tf), scores in by_series.items():
        before = trust.align(dict(stored.get((symbol, tf), {})), live)
        losses = _family_losses([s for s in scores if s.family in before])
        after = trust.update(before, losses, config.learning_rate, config.share)
        writes |= {key_of(f, symbol, tf): w for f, w in after.items()}
        deletes += [key_of(f, symbol, tf) for f in stored.get((symbol, tf), {}) if f not in after]
    return writes, tuple(deletes)


def _split_fresh(
    scores: Sequence[Score], state: StoredState, retention_ms: int
) -> tuple[tuple[Score, ...], tuple[Score, ...]]:
    floor = None if state.newest_scored_ts is None else state.newest_scored_ts - retention_ms
    fresh: dict[str, Score] = {}
    duplicates: list[Score] = []
    for score in scores:
        too_old = floor is not None and score.bar_ts < floor
        if score.member in state.applied or score.member in fresh or too_old:
            duplicates.append(score)
        else:
            fresh[score.member] = score
    return tuple(fresh.values()), tuple(duplicates)


def _family_losses(scores: Sequence[Score]) -> dict[str, float]:
    """A family's loss in a round: the mean of its scores (usually exactly one)."""
    by_family: dict[str, list[float]] = {}
    for score in scores:
        by_family.setdefault(score.family, []).append(score.loss)
    return {f: math.fsum(ls) / len(ls) for f, ls in by_family.items()}


def _event_fields(
    score: Score,
    losses: Mapping[str, float],
    before: Mapping[str, float],
    after: Mapping[str, float],
    round_ts: int,
) -> dict[str, str]:
    return {
        "bar_ts": str(score.bar_ts),
        "round_ts": str(round_ts),
        "symbol": score.symbol,
        "model": score.model,
        "version": score.version,
        "loss": repr(score.loss),
        "round_loss": repr(losses[score.family]),
        "weight_before": repr(before[score.family]),
        "weight_after": repr(after[score.family]),
    }


def _trim_floor(state: StoredState, fresh: Sequence[Score], retention_ms: int) -> int | None:
    """Scores older than the retention window behind the newest are forgotten."""
    if not fresh:
        return None
    newest = max(s.bar_ts for s in fresh)
    if state.newest_scored_ts is not None:
        newest = max(newest, state.newest_scored_ts)
    return newest - retention_ms


class TrustStore:
    """The Redis side of trust memory, on the daemon's ``redis.asyncio`` client."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        config: TrustConfig,
        families: Sequence[str] = FAMILIES,
        scored_retention_ms: int = DEFAULT_SCORED_RETENTION_MS,
    ) -> None:
        self.client = client
        self.keys = keys
        self.config = config
        self.families = tuple(families)
        self.retention_ms = scored_retention_ms

    async def apply(
        self, scores: Sequence[Score], live: Sequence[str], round_ts: int
    ) -> TrustRound:
        """Apply the scores of one round (the bar that closed at ``round_ts``)
        to the weights of the ``live`` families, atomically and at most once each."""
        self._check_families([s.family for s in scores] + list(live))
        backoff = Backoff(base=0.001, cap=0.05)  # two writers must not retry in step
        for _ in range(MAX_ATTEMPTS):
            try:
                return await self._attempt(scores, live, round_ts)
            except WatchError:
                await asyncio.sleep(backoff.next_delay())
        raise TrustConflict(f"trust round {round_ts} lost {MAX_ATTEMPTS} races; not applied")

    async def set_live(self, live: Sequence[str], round_ts: int) -> TrustRound:
        """Align the weights to a new live set (a family was promoted or retired)."""
        return await self.apply((), live, round_ts)

    async def weights(self) -> dict[str, float]:
        values = await self.client.mget([self.keys.trust(f) for f in self.families])
        return {f: float(v) for f, v in zip(self.families, values, strict=True) if v is not None}

    async def history(self) -> History:
        raw = await self.client.hgetall(self.keys.trust_history)
        return {_text(f): _parse_history(v) for f, v in raw.items()}

    async def events(self, family: str, count: int = EVENTS_MAXLEN) -> list[TrustEvent]:
        """The family's most recent updates, newest first."""
        entries = await self.client.xrevrange(self.keys.trust_events(family), count=count)
        return [_parse_event(family, entry_id, fields) for entry_id, fields in entries or []]

    async def snapshot(self, events_per_family: int = 10) -> TrustSnapshot:
        events = {f: await self.events(f, events_per_family) for f in self.families}
        return TrustSnapshot(
            await self.weights(), await self.history(), {f: e for f, e in events.items() if e}
        )

    async def series_weights(self, symbol: str, tf: str) -> dict[str, float]:
        """The families' weights on one series."""
        keys = [self.keys.trust_series(f, symbol, tf) for f in self.families]
        values = await self.client.mget(keys)
        return {f: float(v) for f, v in zip(self.families, values, strict=True) if v is not None}

    async def _attempt(
        self, scores: Sequence[Score], live: Sequence[str], round_ts: int
    ) -> TrustRound:
        weight_keys = [self.keys.trust(f) for f in self.families]
        series = sorted({s for s in map(series_of, scores) if s is not None})
        series_keys = [self.keys.trust_series(f, *one) for one in series for f in self.families]
        async with self.client.pipeline(transaction=True) as pipe:
            await pipe.watch(*weight_keys, *series_keys, self.keys.scored)
            state = await self._read(pipe, weight_keys, [s.member for s in scores])
            plan = plan_round(state, scores, live, round_ts, self.config, self.retention_ms)
            if series:
                stored = await self._read_series(pipe, series, series_keys)
                writes, deletes = plan_series(
                    stored, plan.round.fresh, live, self.config, self.keys.trust_series
                )
                plan = replace(plan, series_weights=writes, series_deletes=deletes)
            if not plan.scored and not plan.round.changed:
                await pipe.unwatch()
                return plan.round
            pipe.multi()
            self._write(pipe, plan)
            await pipe.execute()
            return plan.round

    async def _read(self, pipe: Any, weight_keys: list[str], members: list[str]) -> StoredState:
        values = await pipe.mget(weight_keys)
        weights = {f: float(v) for f, v in zip(self.families, values, strict=True) if v is not None}
        applied: frozenset[str] = frozenset()
        if members:
            found = await pipe.zmscore(self.keys.scored, members)
            applied = frozenset(m for m, s in zip(members, found, strict=True) if s is not None)
        newest = await pipe.zrange(self.keys.scored, -1, -1, withscores=True)
        return StoredState(
            weights=weights,
            applied=applied,
            newest_scored_ts=int(newest[0][1]) if newest else None,
        )

    async def _read_series(
        self, pipe: Any, series: Sequence[tuple[str, str]], keys: list[str]
    ) -> dict[tuple[str, str], dict[str, float]]:
        values = iter(await pipe.mget(keys))
        stored: dict[tuple[str, str], dict[str, float]] = {}
        for one in series:
            row = {f: next(values) for f in self.families}
            stored[one] = {f: float(v) for f, v in row.items() if v is not None}
        return stored

    def _write(self, pipe: Any, plan: RoundPlan) -> None:
        for key, weight in plan.series_weights.items():
            pipe.set(key, repr(weight))
        for key in plan.series_deletes:
            pipe.delete(key)
        for family, weight in plan.set_weights.items():
            pipe.set(self.keys.trust(family), repr(weight))
        for family in plan.delete_families:
            pipe.delete(self.keys.trust(family))
        if plan.history:
            entries = [
                part
                for family, (ts, weight) in plan.history.items()
                for part in (family, f"[{ts},{weight!r}]")
            ]
            pipe.eval(
                APPEND_HISTORY_LUA, 1, self.keys.trust_history, self.config.history_len, *entries
            )
        for family, fields in plan.events:
            pipe.xadd(
                self.keys.trust_events(family), fields, maxlen=EVENTS_MAXLEN, approximate=False
            )
        if plan.scored:
            pipe.zadd(self.keys.scored, dict(plan.scored))
        if plan.trim_scored_below is not None:
            pipe.zremrangebyscore(self.keys.scored, "-inf", f"({plan.trim_scored_below}")

    def _check_families(self, families: Sequence[str]) -> None:
        unknown = sorted(set(families) - set(self.families))
        if unknown:
            raise ValueError(f"unknown families {unknown}; known: {list(self.families)}")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_history(raw: str | bytes) -> list[tuple[int, float]]:
    return [(int(ts), float(w)) for ts, w in json.loads(_text(raw))]


def _parse_event(family: str, entry_id: Any, fields: Any) -> TrustEvent:
    f = {_text(k): _text(v) for k, v in fields.items()}
    return TrustEvent(
        id=_text(entry_id),
        family=family,
        bar_ts=int(f["bar_ts"]),
        round_ts=int(f["round_ts"]),
        symbol=f["symbol"],
        model=f["model"],
        version=f["version"],
        loss=float(f["loss"]),
        round_loss=float(f["round_loss"]),
        weight_before=float(f["weight_before"]),
        weight_after=float(f["weight_after"]),
    )
