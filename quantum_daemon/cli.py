"""The ``quantum-daemon`` command line: a thin router to ``commands/*``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from quantum_daemon.domain import config as config_mod

# Sub-command modules under quantum_daemon.commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "run",
    "check_config",
    "status",
    "train",
    "models",
    "replay",
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
    parser.add_argument(
        "--config",
        "-c",
        default=None,
        help="config file (default: $QUANTUM_CONFIG, else ./config.toml if present, "
        "else built-in defaults)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"quantum_daemon.commands.{name}").register(sub)
    return parser


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
    except config_mod.ConfigError as exc:
        print(f"quantum-daemon: config error: {exc}", file=sys.stderr)
        raise SystemExit(config_mod.EX_CONFIG) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
