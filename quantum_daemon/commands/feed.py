"""``quantum-daemon feed``: the exchange bar feed as a process of its own.

The options override ``[feed]`` of the config; ``enabled`` does not matter
here (it says whether the *daemon* runs a feed). SIGTERM or SIGINT stop it
(exit 0); a bad pair, timeframe or exchange, or a refused login, exits 78.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from quantum_daemon.domain.errors import EX_CONFIG, EX_FAILURE, ConfigError


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "feed",
        help="publish closed bars from an exchange (ccxt) onto the bar streams",
        description="Back-fill the bars missing since the newest stored bar of each series, "
        "then publish every bar once it has closed (docs/feed.md). Needs the 'feed' extra.",
    )
    parser.add_argument("--exchange", help="ccxt exchange id (default: [feed] exchange)")
    parser.add_argument(
        "--symbols", help="comma-separated ccxt pairs, e.g. BTC/USDT,ETH/USDT (default: [feed])"
    )
    parser.add_argument(
        "--tf", help="comma-separated timeframes, e.g. 1h or 5m,1h (default: [feed] timeframes)"
    )
    parser.add_argument(
        "--since", help="start of a series the store does not hold yet (ISO 8601 UTC)"
    )
    parser.add_argument("--redis-url", help="Redis to publish to (default: the config's redis.url)")
    parser.set_defaults(func=feed)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The ``[feed]`` keys the command line sets, as TOML would give them."""
    given: dict[str, Any] = {}
    if args.exchange is not None:
        given["exchange"] = args.exchange
    if args.symbols is not None:
        given["symbols"] = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if args.tf is not None:
        given["timeframes"] = [t.strip() for t in args.tf.split(",") if t.strip()]
    if args.since is not None:
        given["since"] = args.since
    return given


def feed(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import load_config
    from quantum_daemon.domain.config import secrets_of, with_keys
    from quantum_daemon.domain.secrets import Redactor
    from quantum_daemon.runtime.logs import configure_logging

    cfg = load_config(args)
    try:
        # enabled says whether the daemon runs a feed; off here, so the check
        # that the daemon's ingest reads every fed stream does not apply.
        cfg = with_keys(cfg, "feed", **overrides(args), enabled=False)
        if args.redis_url:
            cfg = with_keys(cfg, "redis", url=args.redis_url)
    except ConfigError as exc:
        print(f"quantum-daemon feed: {Redactor(secrets_of(cfg))(str(exc))}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(cfg.logging.level, cfg.logging.format, secrets_of(cfg))
    try:
        from quantum_daemon.ingest.feed.standalone import run_feed
    except ImportError as exc:
        print(
            f"quantum-daemon feed: {exc}; install the feed extra: "
            "pip install 'quantum-daemon[feed]'",
            file=sys.stderr,
        )
        return EX_FAILURE
    return run_feed(cfg)
