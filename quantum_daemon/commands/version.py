"""``quantum-daemon version``."""

from __future__ import annotations

import argparse
from typing import Any

from quantum_daemon import __version__
from quantum_daemon.domain.errors import EX_OK


def register(sub: Any) -> None:
    parser = sub.add_parser("version", help="print the version")
    parser.set_defaults(func=version)


def version(_: argparse.Namespace) -> int:
    print(f"quantum-daemon {__version__}")
    return EX_OK
