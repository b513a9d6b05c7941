"""Logging as data: structlog configured once per process.

JSON lines on stdout when stdout is not a terminal (systemd, tests), readable
console output in a terminal. Event names are stable and dotted
(``daemon.ready``, ``bars.gap``); values go in keys, never in the message.

Every line leaves through the one redaction (``domain/secrets.py``): the
rendered structlog line, the standard library's records (aiohttp, asyncio)
and an uncaught exception's traceback. Tracebacks carry no frame locals: a
local's repr (the config, a client) is cut at 80 characters, and a secret cut
in half no longer matches its redaction.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Literal

import structlog

from quantum_daemon.domain.secrets import Redactor

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", secrets: Iterable[str] = ()
) -> None:
    """Configure structlog, the standard library's root logger and the
    process's excepthook; ``secrets`` (and URL passwords, tokens) never print."""
    redact = Redactor(secrets)
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
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    structlog.configure(
        processors=[*shared, RedactedRenderer(renderer, redact)],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library: warnings and above only.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(redact))
    sys.excepthook = RedactingExceptHook(redact)


class RedactedRenderer:
    """The last processor: render the event, then redact the whole line (its
    keys, values and traceback alike)."""

    def __init__(self, renderer: structlog.typing.Processor, redact: Redactor) -> None:
        self.renderer = renderer
        self.redact = redact

    def __call__(self, logger: Any, name: str, event: Any) -> str:
        line = self.renderer(logger, name, event)
        text = line.decode() if isinstance(line, bytes | bytearray) else str(line)
        return self.redact(text)


class RedactingFormatter(logging.Formatter):
    """A standard library record, formatted then redacted."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__(logging.BASIC_FORMAT)
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class RedactingExceptHook:
    """``sys.excepthook``: an uncaught exception's traceback, redacted, on stderr."""

    def __init__(self, redact: Redactor) -> None:
        self.redact = redact

    def __call__(
        self, kind: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        text = "".join(traceback.format_exception(kind, exc, tb))
        sys.stderr.write(self.redact(text))
        sys.stderr.flush()


def get_logger(**context: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(**context)
