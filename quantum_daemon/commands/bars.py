"""``quantum-daemon bars stats``: what the bar store holds, per series."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from quantum_daemon.domain.errors import EX_OK


def register(sub: Any) -> None:
    parser = sub.add_parser("bars", help="inspect the bar store")
    actions = parser.add_subparsers(dest="bars_command", metavar="ACTION", required=True)
    stats = actions.add_parser(
        "stats", help="per series: count, first and last bar, missing bars (gaps)"
    )
    stats.add_argument("--json", action="store_true", help="print a JSON list")
    stats.set_defaults(func=bars_stats)


def bars_stats(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import load_config
    from quantum_daemon.storage.bar_store import DB_FILENAME, BarStore

    cfg = load_config(args)
    path = cfg.storage.data_dir / DB_FILENAME
    if not path.exists():
        rows: list[dict[str, Any]] = []
    else:
        with BarStore(path) as store:
            rows = [series.to_dict() for series in store.stats()]
    print(json.dumps(rows) if args.json else format_table(rows, str(path)))
    return EX_OK


def format_table(rows: list[dict[str, Any]], where: str) -> str:
    if not rows:
        return f"no bars stored in {where}"
    header = ("symbol", "tf", "count", "first", "last", "missing")
    lines = [
        (
            r["symbol"],
            r["tf"],
            f"{r['count']:,}",
            _when(r["first_ts"]),
            _when(r["last_ts"]),
            f"{r['missing']:,}",
        )
        for r in rows
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *lines)
    )


def _when(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")
