"""``quantum-daemon owners``: which daemon owns which series, and moving one.

``owners`` prints every live daemon (its own heartbeat) with the series it
owns, each series' lease, and the moves asked for. ``owners move SYMBOL:TF
INSTANCE`` asks the current owner to hand the series to the live daemon
INSTANCE (docs/scaling.md, "Ownership"); with ``--wait S`` it waits up to S
seconds until INSTANCE holds the lease (exit 1 if it does not by then).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from quantum_daemon.domain.errors import EX_FAILURE, EX_OK, EX_USAGE


def register(sub: Any) -> None:
    parser = sub.add_parser("owners", help="list series owners; move a series to another daemon")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per Redis call")
    actions = parser.add_subparsers(dest="owners_action")
    move = actions.add_parser("move", help="hand a series to another live daemon")
    move.add_argument("series", help="SYMBOL:TF, e.g. BTCUSDT:1h")
    move.add_argument("instance", help="the live daemon that shall own it ([daemon] instance)")
    move.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the move")
    parser.set_defaults(func=owners)


def owners(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import load_config
    from quantum_daemon.commands.status import read_daemons

    cfg = load_config(args)
    if getattr(args, "owners_action", None) == "move":
        return _move(cfg, args)
    report = read_daemons(cfg, args.timeout)
    print(json.dumps(report, indent=2, default=str))
    return EX_FAILURE if "daemons_error" in report else EX_OK


def _move(cfg: Any, args: argparse.Namespace) -> int:
    import sys

    from quantum_daemon.commands.status import read_daemons
    from quantum_daemon.domain.errors import BadDataError
    from quantum_daemon.domain.ids import check_symbol, check_timeframe
    from quantum_daemon.domain.keys import Keys

    symbol, _, tf = args.series.partition(":")
    try:
        name = f"{check_symbol(symbol)}:{check_timeframe(tf)}"
    except BadDataError as exc:
        print(f"quantum-daemon owners move: {exc}", file=sys.stderr)
        return EX_USAGE
    report = read_daemons(cfg, args.timeout)
    live = {d.get("instance") for d in report["daemons"]}
    if args.instance not in live:
        print(
            f"quantum-daemon owners move: no live daemon {args.instance!r} "
            f"(live: {sorted(str(i) for i in live)})",
            file=sys.stderr,
        )
        return EX_FAILURE
    client = _client(cfg, args.timeout)
    try:
        client.hset(Keys(cfg.redis.prefix).owner_moves, name, args.instance)
    finally:
        client.close()
    deadline = time.monotonic() + args.wait
    owner = report["owners"].get(name)
    while owner != args.instance and time.monotonic() < deadline:
        time.sleep(0.2)
        owner = read_daemons(cfg, args.timeout)["owners"].get(name)
    print(json.dumps({"series": name, "to": args.instance, "owner": owner}))
    return EX_OK if owner == args.instance or args.wait <= 0 else EX_FAILURE


def _client(cfg: Any, timeout: float) -> Any:
    import redis

    return redis.Redis.from_url(
        cfg.redis.url,
        **cfg.redis.client_options(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
