"""``quantum-daemon models``: list, show, promote, retire, roll back.

``list`` and ``show`` read the registry files in ``storage.data_dir``
directly (each model's ``state.json`` is replaced atomically, so a reader
never sees half a write), whether or not a daemon runs.

``promote``, ``retire`` and ``rollback`` change state. While a daemon runs
(its heartbeat key is fresh) they are sent on ``quantum:control`` and the
command waits for the daemon's ``control.applied`` / ``control.rejected``
answer, so that the daemon's scheduler and loaded models follow. With no
daemon running (or ``--direct``) they are applied to the registry files
here, under the same per-model lock the daemon uses, and their events are
published to Redis at once when it answers; otherwise they wait in the
registry's outbox until the daemon's next start flushes them.

Model ids and versions are checked first (``domain.ids``): a malformed one
is refused before it reaches the registry files or the control stream.

Exit codes: 0 done, 1 refused or failed (the message says why), 2 a
malformed model id or version.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import redis

from quantum_daemon.domain.config import Config
from quantum_daemon.domain.errors import EX_FAILURE, EX_OK, EX_USAGE
from quantum_daemon.domain.events import Event
from quantum_daemon.domain.ids import BadIdentifier, check_model_id, check_version
from quantum_daemon.domain.keys import Keys
from quantum_daemon.lifecycle.control import CONTROL_MAXLEN, Command, apply_to_registry
from quantum_daemon.storage.events import parse_entry, publish_sync
from quantum_daemon.storage.prediction_records import (
    RECORDS_FILE,
    live_intervals_json,
    read_interval_scores,
)
from quantum_daemon.storage.registry.registry import Registry, RegistryError

TABLE_METRICS = ("trades", "sharpe", "dsr", "profit_factor")


def register(sub: Any) -> None:
    parser = sub.add_parser("models", help="list, show, promote, retire or roll back models")
    verbs = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = verbs.add_parser("list", help="every version of every model with its stage")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(func=list_models)
    show = verbs.add_parser("show", help="one model: versions, stage history, verdicts")
    show.add_argument("model_id")
    show.set_defaults(func=show_model)
    for name, needs_version, text in (
        ("promote", True, "make a candidate or retired version active"),
        ("retire", True, "retire an active or candidate version"),
        ("rollback", False, "retire the active version, bring back the previous one"),
    ):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("model_id")
        if needs_version:
            verb.add_argument("version")
        add_sending_options(verb)
        verb.set_defaults(func=change, verb=name)


def add_sending_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="operator", help="recorded in the stage history")
    parser.add_argument(
        "--direct", action="store_true", help="apply to the registry files even if a daemon runs"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the daemon's answer"
    )


def _config(args: argparse.Namespace) -> Config:
    from quantum_daemon.cli import load_config

    return load_config(args)


def list_models(args: argparse.Namespace) -> int:
    versions = Registry(_config(args).storage.data_dir).versions()
    if args.json:
        print(json.dumps([v.to_json() for v in versions], indent=1, default=str))
        return EX_OK
    header = ("model_id", "version", "stage", "created_at", *TABLE_METRICS)
    rows = [
        (
            v.model_id,
            v.version,
            v.stage,
            str(v.created_at)[:19],
            *(_cell(v.metrics.get(k)) for k in TABLE_METRICS),
        )
        for v in versions
    ]
    print(_table([header, *rows]) if rows else "no model versions yet")
    return EX_OK


def refused_ids(model_id: str, version: str | None = None) -> int | None:
    """EX_USAGE, after saying why, when the model id or version is
    malformed; None when both are well-formed."""
    try:
        check_model_id(model_id)
        if version is not None:
            check_version(version)
    except BadIdentifier as exc:
        print(f"quantum-daemon: {exc}", file=sys.stderr)
        return EX_USAGE
    return None


def show_model(args: argparse.Namespace) -> int:
    if (refused := refused_ids(args.model_id)) is not None:
        return refused
    data_dir = _config(args).storage.data_dir
    try:
        body = Registry(data_dir).show(args.model_id)
    except RegistryError as exc:
        print(f"quantum-daemon: {exc}", file=sys.stderr)
        return EX_FAILURE
    # each version's live interval record: scored forecasts, 90 % coverage,
    # mean pinball (null before any is scored)
    scores = read_interval_scores(Path(data_dir) / RECORDS_FILE)
    for version in body["versions"]:
        version["live_intervals"] = live_intervals_json(scores, args.model_id, version["version"])
    print(json.dumps(body, indent=1, default=str))
    return EX_OK


def change(args: argparse.Namespace) -> int:
    if (refused := refused_ids(args.model_id, getattr(args, "version", None))) is not None:
        return refused
    cfg = _config(args)
    command = Command(args.verb, args.model_id, getattr(args, "version", None), args.reason)
    if not args.direct and daemon_alive(cfg):
        return send_to_daemon(cfg, command, args.timeout)
    return apply_directly(cfg, command)


def train_now(args: argparse.Namespace, model_id: str, timeout_s: float = 30.0) -> int:
    """``train --now MODEL_ID``: ask the running daemon to train the model
    now (an operator trigger: it goes first among models with an active
    version). Answers once the request is queued; the job's own events
    follow on ``quantum:events``."""
    if (refused := refused_ids(model_id)) is not None:
        return refused
    cfg = _config(args)
    if not daemon_alive(cfg):
        print(
            "quantum-daemon: no daemon is running; `train --now` asks a running daemon "
            "(use `train --family ...` to train offline)",
            file=sys.stderr,
        )
        return EX_FAILURE
    return send_to_daemon(cfg, Command("train", model_id, reason="train --now"), timeout_s)


def daemon_alive(cfg: Config) -> bool:
    from quantum_daemon.commands.status import read_heartbeat

    return bool(read_heartbeat(cfg, timeout=2.0).get("alive"))


def send_to_daemon(cfg: Config, command: Command, timeout_s: float) -> int:
    """Send ``command`` on the control stream; print the daemon's answer."""
    client = _client(cfg)
    try:
        answer = send_and_wait(client, Keys(cfg.redis.prefix), command, timeout_s)
    except (redis.RedisError, OSError) as exc:
        print(f"quantum-daemon: redis: {exc}", file=sys.stderr)
        return EX_FAILURE
    finally:
        client.close()
    if answer is None:
        print(f"quantum-daemon: no answer from the daemon within {timeout_s:g}s", file=sys.stderr)
        return EX_FAILURE
    print(json.dumps({"mode": "daemon", **answer.data}, default=str))
    return EX_OK if answer.type == "control.applied" else EX_FAILURE


def send_and_wait(
    client: redis.Redis, keys: Keys, command: Command, timeout_s: float
) -> Event | None:
    """XADD the command, then read ``quantum:events`` for its answer."""
    newest: Any = client.xrevrange(keys.events, count=1)
    cursor: Any = newest[0][0] if newest else b"0-0"
    fields: Any = command.fields()
    sent = client.xadd(keys.control, fields, maxlen=CONTROL_MAXLEN, approximate=True)
    command_id = sent.decode() if isinstance(sent, bytes) else str(sent)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply: Any = client.xread({keys.events: cursor}, count=100, block=250)
        for _, entries in reply or []:
            for entry_id, fields in entries:
                cursor = entry_id
                event = parse_entry(fields)
                if event.type.startswith("control.") and event.data.get("command_id") == command_id:
                    return event
    return None


def apply_directly(cfg: Config, command: Command) -> int:
    registry = Registry(cfg.storage.data_dir)
    try:
        events = apply_to_registry(registry, command)
    except RegistryError as exc:
        print(f"quantum-daemon: {exc}", file=sys.stderr)
        flush_model_outbox(cfg, registry, command.model_id)  # a refusal has its event
        return EX_FAILURE
    published = flush_model_outbox(cfg, registry, command.model_id)
    print(
        json.dumps(
            {
                "mode": "direct",
                "model_id": command.model_id,
                "command": command.name,
                "did": [e.type for e in events],
                "active": registry.active_version(command.model_id),
                "events_published": published,
            },
            default=str,
        )
    )
    return EX_OK


def flush_model_outbox(cfg: Config, registry: Registry, model_id: str) -> bool:
    """Publish the model's outbox now; False (events kept) when Redis is away."""
    keys = Keys(cfg.redis.prefix)
    client = _client(cfg)
    try:
        done = []
        for event in registry.pending_events():
            if event.model_id == model_id:
                publish_sync(client, keys, event)
                done.append(event.event_id)
        if done:
            registry.confirm_events(model_id, done)
        return True
    except (redis.RedisError, OSError):
        print("quantum-daemon: redis unreachable; events wait in the outbox", file=sys.stderr)
        return False
    finally:
        client.close()


def _client(cfg: Config) -> redis.Redis:
    return redis.Redis.from_url(
        cfg.redis.url,
        **cfg.redis.client_options(),
        socket_timeout=cfg.redis.connect_timeout_s,
        socket_connect_timeout=cfg.redis.connect_timeout_s,
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )
