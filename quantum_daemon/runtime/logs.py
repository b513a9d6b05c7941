"""Logging as data: structlog configured once per process.

JSON lines on stdout when stdout is not a terminal (systemd, tests), readable
console output in a terminal. Event names are stable and dotted
(``daemon.ready``, ``bars.gap``); values go in keys, never in the message.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: LogFormat = "auto") -> None:
    """Configure structlog and the standard library's root logger."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        shared.append(structlog.processors.dict_tracebacks)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library: warnings and above only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(**context)
