"""Operator commands: the ``quantum:control`` stream and what the CLI shares.

A command is a stream entry with the fields ``command`` (``train``,
``promote``, ``retire``, ``rollback``), ``model_id``, ``version`` (promote
and retire) and an optional ``reason``. The daemon reads the stream with a
consumer group (the ingest group's name), applies each command, answers on
``quantum:events`` with ``control.applied`` or ``control.rejected`` (with
``command_id``, the entry id, so that the sender can wait for its answer),
then acknowledges it. On start it first re-reads its own pending entries;
the registry remembers applied command ids, so a redelivery changes nothing.

``apply_to_registry`` is the one mapping of promote / retire / rollback onto
the registry: the daemon's handler and the CLI's direct mode (no daemon
running) both call it.

Every entry is answered and acknowledged, whatever it holds: bytes that are
not UTF-8, unknown or missing fields, ids that fail ``domain.ids`` (a NUL, a
``/``, 300 characters), an entry over ``MAX_ENTRY_BYTES``, or a handler that
fails (a file-system error, a bug) each get a ``control.rejected`` with the
reason. Only Redis errors (publishing the answer, acknowledging) are retried:
the entry then stays pending and is handled again. A restarted daemon (a new
``host-pid`` consumer) first takes over what its dead predecessor on this
host left pending, so a crash never strands a command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from quantum_daemon.domain.errors import BadDataError
from quantum_daemon.domain.events import CONTROL_APPLIED, CONTROL_REJECTED, Event, make_event
from quantum_daemon.domain.ids import ModelKey, check_model_id, check_version, shown
from quantum_daemon.domain.keys import Keys
from quantum_daemon.runtime.aio import sleep_or_stop
from quantum_daemon.runtime.backoff import Backoff
from quantum_daemon.runtime.consumers import claim_from_dead_local_consumers, consumer_name
from quantum_daemon.runtime.liveness import beat
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.artifacts import ArtifactCorrupt
from quantum_daemon.storage.events import EventPublisher
from quantum_daemon.storage.registry.registry import Registry, RegistryError

log = get_logger()

COMMANDS = ("train", "promote", "retire", "rollback")
NEEDS_VERSION = frozenset({"promote", "retire"})
FIELDS = ("command", "model_id", "version", "reason")
CONTROL_MAXLEN = 10_000
MAX_ENTRY_BYTES = 4096  # names and values together; a real command is < 200
MAX_REASON_CHARS = 500
CLAIM_CHUNK = 100


class BadCommand(BadDataError):
    """A control entry that is not a valid command (it is rejected and acked)."""


@dataclass(frozen=True)
class Command:
    name: str
    model_id: str
    version: str | None = None
    reason: str = "operator"
    command_id: str | None = None

    def fields(self) -> dict[str, str]:
        """The stream entry that sends this command."""
        body = {"command": self.name, "model_id": self.model_id, "reason": self.reason}
        if self.version:
            body["version"] = self.version
        return body


def parse_command(entry_id: str, fields: Mapping[Any, Any]) -> Command:
    """The command of one entry; ``BadCommand`` (with the reason) for
    anything else. Never raises anything but ``BadCommand``."""
    try:
        return _parse(entry_id, fields)
    except BadDataError as exc:
        raise BadCommand(str(exc)) from None
    except Exception as exc:  # the edge holds whatever arrives
        raise BadCommand(f"undecodable entry: {type(exc).__name__}") from None


def _parse(entry_id: str, fields: Mapping[Any, Any]) -> Command:
    if not fields:  # Redis gives a pending entry deleted since (trimmed) without fields
        raise BadCommand("the entry has no fields (deleted from the stream before it was read?)")
    size = sum(len(k) + len(v) for k, v in fields.items())
    if size > MAX_ENTRY_BYTES:
        raise BadCommand(f"entry of {size} bytes > {MAX_ENTRY_BYTES}")
    get: dict[str, str] = {}
    for raw_name, raw_value in fields.items():
        key = _field_text(raw_name, "a field name")
        get[key] = _field_text(raw_value, f"field {key!r}")
    unexpected = sorted(set(get) - set(FIELDS))
    if unexpected:
        raise BadCommand(
            f"unexpected fields {[shown(n) for n in unexpected]}; known: {list(FIELDS)}"
        )
    name = get.get("command", "")
    if name not in COMMANDS:
        raise BadCommand(f"unknown command {shown(name)}; known: {list(COMMANDS)}")
    model_id = check_model_id(get.get("model_id", ""))
    version = get.get("version") or None
    if name in NEEDS_VERSION and version is None:
        raise BadCommand(f"{name} needs a version")
    if version is not None:
        check_version(version)
    return Command(name, model_id, version, _reason(get.get("reason")), entry_id)


def _field_text(value: Any, what: str) -> str:
    """A field's bytes as text: UTF-8, without control characters."""
    try:
        text = value.decode() if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise BadCommand(f"{what} is not UTF-8: {shown(value)}") from None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise BadCommand(f"{what} holds a control character: {shown(text)}")
    return text


def _reason(reason: str | None) -> str:
    if not reason:
        return "operator"
    if len(reason) > MAX_REASON_CHARS:
        raise BadCommand(f"reason is longer than {MAX_REASON_CHARS} characters")
    return reason


def apply_to_registry(registry: Registry, command: Command) -> list[Event]:
    """Promote, retire or roll back in the registry; raises ``RegistryError``
    (for a model without versions before anything is written, so a refusal
    leaves no folder behind). A version about to become active has its
    artifacts checked first: a corrupt one is refused (``model.load_refused``)
    and never activated."""
    if not registry.versions(command.model_id):
        raise RegistryError(f"unknown model {command.model_id!r}: it has no versions")
    reason = f"operator: {command.reason}"
    if command.name in ("promote", "rollback"):
        target = command.version or registry.previous_active(command.model_id)
        if target is not None:
            check_artifacts(registry, command.model_id, target)
    if command.name == "promote":
        assert command.version is not None
        return registry.promote(command.model_id, command.version, reason, command.command_id)
    if command.name == "retire":
        assert command.version is not None
        return registry.retire(command.model_id, command.version, reason, command.command_id)
    if command.name == "rollback":
        return registry.rollback(command.model_id, reason, command.command_id)
    raise BadCommand(f"{command.name} is not a registry command")


def check_artifacts(registry: Registry, model_id: str, version: str) -> None:
    """Raise ``RegistryError`` (after recording the refusal) when the
    version's artifacts fail their sha256 check; its message (a control
    answer) names the folder from the data dir on, not the data dir."""
    if version not in {v.version for v in registry.versions(model_id)}:
        return  # the registry refuses an unknown version itself
    try:
        registry.verify(model_id, version)
    except ArtifactCorrupt as exc:
        registry.refuse(model_id, version, str(exc))
        folder = registry.version_path(model_id, version)
        where = f"{{data_dir}}/{folder.relative_to(registry.data_dir)}"
        shown = str(exc).replace(str(folder), where)
        raise RegistryError(f"{model_id} {version}: artifact refused: {shown}") from None


def reply_event(command: Command | None, entry_id: str, error: str | None, **fields: Any) -> Event:
    """``control.applied`` or ``control.rejected`` for the entry ``entry_id``."""
    model_id = command.model_id if command else ""
    try:
        key = ModelKey.parse(model_id)
    except ValueError:
        key = ModelKey("", "", "")
    return make_event(
        CONTROL_REJECTED if error else CONTROL_APPLIED,
        model_id=model_id,
        family=key.family,
        symbol=key.symbol,
        tf=key.tf,
        version=command.version if command else None,
        at=datetime.now(UTC),
        transition=entry_id,
        command_id=entry_id,
        command=command.name if command else None,
        error=error,
        **fields,
    )


Handler = Callable[[Command], Awaitable[list[str]]]
# The instance a command must go to (another daemon owns its model's series),
# or None to apply it here (docs/scaling.md, "Ownership").
Router = Callable[[Command], Awaitable[str | None]]
FORWARDED_ID = "forwarded_id"  # in an inbox entry: the id the sender waits on


class ControlConsumer:
    """Reads ``quantum:control`` with a consumer group and applies commands
    with ``handler`` (which returns the names of what it did, for the reply)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        group: str,
        handler: Handler,
        publisher: EventPublisher,
        consumer: str | None = None,
        block_ms: int = 200,
        reconnect_max_s: float = 10.0,
        inbox: str | None = None,
        route: Router | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.group = group
        self.handler = handler
        self.publisher = publisher
        self.consumer = consumer or consumer_name()
        self.block_ms = block_ms
        self.reconnect_max_s = reconnect_max_s
        self.applied = 0
        self.rejected = 0
        self.forwarded = 0
        self.inbox = inbox  # commands other daemons forwarded to this one
        self.route = route

    @property
    def streams(self) -> list[str]:
        return [self.keys.control] + ([self.inbox] if self.inbox else [])

    async def ensure_group(self) -> None:
        for stream in self.streams:
            try:
                await self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(cap=self.reconnect_max_s)
        while not stop.is_set():
            try:
                await self.ensure_group()
                for stream in self.streams:
                    await claim_from_dead_local_consumers(
                        self.client, stream, self.group, self.consumer, CLAIM_CHUNK
                    )
                await self.drain_pending()
                while not stop.is_set():
                    await self.read_once(">", self.block_ms)
                    beat()  # BLOCK bounds an idle read: the loop beats at least that often
                    backoff.reset()
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("control.redis_error", error=str(exc), retry_in_s=round(delay, 3))
                await sleep_or_stop(stop, delay)

    async def drain_pending(self) -> int:
        """Re-read and apply this consumer's unacknowledged commands."""
        total = 0
        while handled := await self.read_once("0", None):
            total += handled
        return total

    async def read_once(self, cursor: str, block_ms: int | None) -> int:
        reply: Any = await self.client.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self.streams, cursor),
            count=10,
            block=block_ms,
        )
        handled = 0
        items = reply.items() if isinstance(reply, dict) else reply or []
        for stream, entries in items:
            for entry_id, fields in entries:
                await self.handle(_text(entry_id), fields or {}, _text(stream))
                handled += 1
        return handled

    async def handle(
        self, entry_id: str, fields: Mapping[Any, Any], stream: str | None = None
    ) -> None:
        """Apply one entry and answer it, or forward it to the daemon that
        owns its model; only a Redis error (answering, acknowledging,
        forwarding) escapes, and the entry then stays pending."""
        stream = stream or self.keys.control
        command: Command | None = None
        answer_id = entry_id
        try:
            if stream == self.inbox:
                answer_id, fields = _unwrap(entry_id, fields)
            command = parse_command(answer_id, fields)
            if stream != self.inbox and self.route is not None:
                owner = await self.route(command)
                if owner is not None:
                    await self._forward(owner, entry_id, command)
                    return
            done = await self.handler(command)
        except RedisError:
            raise  # the loop reconnects; the entry stays pending
        except Exception as exc:
            error = refusal(exc)
            reply = reply_event(command, answer_id, error)
            self.rejected += 1
            log.warning("control.rejected", command_id=answer_id, error=error)
        else:
            reply = reply_event(command, answer_id, None, did=done)
            self.applied += 1
            log.info(
                "control.applied",
                command=command.name,
                model_id=command.model_id,
                version=command.version,
                command_id=answer_id,
                did=done,
            )
        await self.publisher.publish(reply)
        await self.client.xack(stream, self.group, entry_id)

    async def _forward(self, owner: str, entry_id: str, command: Command) -> None:
        """Hand the command to its owner's inbox, then acknowledge it here
        (one ``MULTI``: it is forwarded once, or stays pending here)."""
        body: dict[Any, Any] = {**command.fields(), FORWARDED_ID: entry_id}
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.control_inbox(owner), body, maxlen=CONTROL_MAXLEN, approximate=True)
            pipe.xack(self.keys.control, self.group, entry_id)
            await pipe.execute()
        self.forwarded += 1
        log.info("control.forwarded", command_id=entry_id, owner=owner, model_id=command.model_id)


def refusal(exc: Exception) -> str:
    """The reason of a ``control.rejected`` answer: the message of an
    expected refusal; for a file-system error its cause without the path
    (answers must not show the data dir); for anything else its type (the
    traceback goes to the log)."""
    if isinstance(exc, BadDataError | RegistryError):
        return str(exc)
    if isinstance(exc, KeyError):
        return f"unknown model {exc}"
    if isinstance(exc, OSError):
        return f"could not apply: {exc.strerror or type(exc).__name__}"
    log.error("control.handler_failed", error=repr(exc), exc_info=exc)
    return f"internal error: {type(exc).__name__}"


def _unwrap(entry_id: str, fields: Mapping[Any, Any]) -> tuple[str, Mapping[Any, Any]]:
    """(the id the sender waits on, the command's own fields) of an inbox entry."""
    rest = {_text(k): v for k, v in fields.items()}
    original = rest.pop(FORWARDED_ID, None)
    return (_text(original) if original is not None else entry_id), rest


def _text(value: Any) -> str:
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else str(value)
