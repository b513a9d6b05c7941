"""``quantum-daemon replay FILE...``: publish bar files onto the bar streams."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from quantum_daemon.domain.errors import EX_FAILURE, EX_OK, EX_USAGE


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "replay",
        help="publish bar files (CSV, Freqtrade JSON / feather / parquet) onto the bar streams",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="bar files to publish, in order")
    parser.add_argument("--symbol", help="symbol (default: from a Freqtrade file name)")
    parser.add_argument("--tf", help="timeframe (default: from a Freqtrade file name)")
    parser.add_argument("--redis-url", help="Redis to publish to (default: the config's redis.url)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=replay)


def replay(args: argparse.Namespace) -> int:
    import redis

    from quantum_daemon.cli import load_config
    from quantum_daemon.domain.keys import Keys
    from quantum_daemon.ingest.replay import replay_files
    from quantum_daemon.storage.bar_files import BarFileError

    cfg = load_config(args)
    url = args.redis_url or cfg.redis.url
    client = redis.Redis.from_url(url, **cfg.redis.client_options(url))
    try:
        result = replay_files(
            client,
            Keys(cfg.redis.prefix),
            args.files,
            args.symbol,
            args.tf,
            maxlen=cfg.ingest.stream_maxlen,
            progress_out=None if args.quiet else sys.stderr,
        )
    except BarFileError as exc:
        print(f"quantum-daemon replay: {exc}", file=sys.stderr)
        return EX_USAGE
    except redis.RedisError as exc:
        print(f"quantum-daemon replay: redis error: {exc}", file=sys.stderr)
        return EX_FAILURE
    finally:
        client.close()
    streams = ", ".join(result.streams)
    print(
        f"published {result.bars} bars to {streams} in {result.seconds:.2f}s "
        f"({result.per_s:,.0f} bars/s)"
    )
    return EX_OK
