"""A Redis ACL that lacks a permission is a configuration fault, not an outage.

Redis answers a command the user may not run (or a key it may not touch)
with ``NOPERM``; a script's call gets the same refusal as a plain error.
Retrying cannot help, and the loops that retry Redis errors would otherwise
wait it out forever while ``/readyz`` stays green. So every connection of the
daemon's client reports the first refusal (``watch_denials``) and raises it
as ``RedisPermissionDenied``: a ``ConfigError`` (exit code 78, which systemd's
``RestartPreventExitStatus=78`` does not restart: no crash loop) that is
still a redis-py ``NoPermissionError`` for the code that handles those.
The rule the daemon needs is ``systemd/redis-acl.conf`` (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from quantum_daemon.domain.errors import ConfigError

ACL_RULE_FILE = "systemd/redis-acl.conf"
# The wording of a refusal inside a script (a plain ERR, not NOPERM).
_SCRIPT_REFUSALS = ("The user executing the script can't", "no permissions to")


class RedisPermissionDenied(ConfigError, NoPermissionError):
    """The Redis user may not run a command the daemon needs, or touch its key."""

    def __init__(self, message: str) -> None:
        NoPermissionError.__init__(self, message)  # sets redis-py's error_type too

    def __repr__(self) -> str:
        return f"RedisPermissionDenied({str(self)!r})"


def is_denial(exc: BaseException) -> bool:
    if isinstance(exc, NoPermissionError):
        return True
    return isinstance(exc, ResponseError) and any(m in str(exc) for m in _SCRIPT_REFUSALS)


def denial_message(exc: BaseException) -> str:
    return (
        f"the Redis user lacks a permission the daemon needs: {exc} "
        f"(grant the rule of {ACL_RULE_FILE}: docs/operations.md, 'Redis ACL'; "
        "the server's ACL LOG names the key)"
    )


def watch_denials(client: aioredis.Redis, on_denied: Callable[[str], None]) -> None:
    """Make every connection of ``client`` call ``on_denied`` with the message
    of a refusal, and raise ``RedisPermissionDenied`` in its place."""
    pool = client.connection_pool
    pool.connection_class = _reporting(pool.connection_class, on_denied)


def _reporting(base: type[Any], on_denied: Callable[[str], None]) -> type[Any]:
    class ReportsDenials(base):
        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().read_response(*args, **kwargs)
            except ResponseError as exc:
                if not is_denial(exc) or isinstance(exc, RedisPermissionDenied):
                    raise
                message = denial_message(exc)
                on_denied(message)
                raise RedisPermissionDenied(message) from exc

    ReportsDenials.__name__ = f"ReportsDenials{base.__name__}"
    return ReportsDenials
