"""The ``quantum-daemon`` command line: a thin router to ``commands/*``.

``--config FILE`` is taken before or after the sub-command (``quantum-daemon
--config FILE run`` and ``quantum-daemon run --config FILE`` are the same).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from quantum_daemon.domain import config as config_mod
from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.domain.secrets import Redactor

# Sub-command modules under quantum_daemon.commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "run",
    "check_config",
    "status",
    "owners",
    "train",
    "models",
    "replay",
    "feed",
    "simulate",
    "bars",
    "version",
)

DEFAULT_CONFIG = "config.toml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantum-daemon",
        description="Continuous-learning engine for crypto trading models on Redis Streams.",
    )
    add_config_option(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"quantum_daemon.commands.{name}").register(sub)
    for command_parser in sub_parsers(parser):
        # SUPPRESS: a sub-command without --config keeps the top-level value.
        add_config_option(command_parser, default=argparse.SUPPRESS)
    return parser


def add_config_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help="config file (default: $QUANTUM_CONFIG, else ./config.toml if present, "
        "else built-in defaults)",
    )


def sub_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (sub-commands and their actions), once each."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.setdefault(id(child), child)
    return [p for child in found.values() for p in (child, *sub_parsers(child))]


def config_path(args: argparse.Namespace) -> Path | None:
    """The config file to read: --config, $QUANTUM_CONFIG, or ./config.toml."""
    given = args.config or os.environ.get("QUANTUM_CONFIG")
    if given:
        return Path(given)
    default = Path(DEFAULT_CONFIG)
    return default if default.exists() else None


def load_config(args: argparse.Namespace) -> config_mod.Config:
    """Load the config or exit 78 (EX_CONFIG) with a one-line message."""
    try:
        return config_mod.load(config_path(args))
    except ConfigError as exc:
        # No config, so no known secrets: the patterns still hide a URL's password.
        print(f"quantum-daemon: config error: {Redactor()(str(exc))}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
