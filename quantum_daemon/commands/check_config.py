"""``quantum-daemon check-config``: validate the config and print it, every
secret hidden (``domain.config.display``: the one redaction of every output)."""

from __future__ import annotations

import argparse
from typing import Any

from quantum_daemon.domain.errors import EX_OK


def register(sub: Any) -> None:
    parser = sub.add_parser("check-config", help="validate the configuration and print it")
    parser.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import config_path, load_config
    from quantum_daemon.domain.config import display, redactor

    cfg = load_config(args)
    source = config_path(args) or "built-in defaults"
    print(redactor(cfg)(f"config OK ({source})"))
    for line in display(cfg):
        print(f"  {line}")
    return EX_OK
