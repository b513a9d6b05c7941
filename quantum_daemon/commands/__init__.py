"""CLI sub-commands, one module each.

Each module exposes ``register(subparsers) -> None`` that adds its parser and
sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and
returning the exit code). Modules import heavy libraries only inside ``func``.
``quantum_daemon.cli.COMMAND_MODULES`` lists them in help order.
"""
