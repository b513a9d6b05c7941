"""``quantum-daemon run``: run the daemon in the foreground (systemd's ExecStart)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser("run", help="run the daemon in the foreground")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import load_config
    from quantum_daemon.daemon import run_daemon
    from quantum_daemon.domain.config import secrets_of
    from quantum_daemon.runtime.logs import configure_logging

    cfg = load_config(args)
    configure_logging(cfg.logging.level, cfg.logging.format, secrets_of(cfg))
    return run_daemon(cfg)
