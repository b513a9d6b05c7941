"""``quantum-daemon check-config``: validate the config and print it (secrets hidden)."""

from __future__ import annotations

import argparse
from typing import Any

from quantum_daemon.domain.errors import EX_OK


def register(sub: Any) -> None:
    parser = sub.add_parser("check-config", help="validate the configuration and print it")
    parser.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import config_path, load_config

    cfg = load_config(args)
    source = config_path(args) or "built-in defaults"
    print(f"config OK ({source})")
    for section in cfg.__dataclass_fields__:
        print(f"  [{section}] {getattr(cfg, section)!r}")
    return EX_OK
