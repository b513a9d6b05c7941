"""The error taxonomy and every exit code of the ``quantum-daemon`` process.

Three kinds of failure, handled three ways:

- ``TransientError``: the world is briefly away (Redis, the network); retry
  with backoff, the process stays up.
- ``BadDataError``: one input is unusable (a malformed entry, too few bars);
  reject it (dead-letter it, answer an error) and go on with the next.
- ``FatalError``: the process cannot go on (bad configuration, a crash loop);
  stop, exit non-zero, let the operator or systemd act.

Exit codes follow BSD ``sysexits.h`` where one fits; docs/operations.md lists
them.
"""

from __future__ import annotations

EX_OK = 0
EX_FAILURE = 1  # the daemon crashed, or a command was refused or failed
EX_USAGE = 2  # bad command line (argparse's code); bad input to replay or simulate
EX_DATAERR = 65  # the input data is unusable (e.g. too few bars)
EX_NOINPUT = 66  # an input file or series is missing
EX_TEMPFAIL = 75  # another daemon holds the data dir (its lock); systemd retries later
EX_CONFIG = 78  # bad configuration; systemd's RestartPreventExitStatus=78
EX_INTERRUPTED = 130  # 128 + SIGINT: the daemon's second SIGINT; simulate cut short


class QuantumError(Exception):
    """Base of the errors this package raises on purpose."""


class TransientError(QuantumError):
    """Worth retrying: the resource is expected back (Redis, the network)."""


class BadDataError(QuantumError, ValueError):
    """One input is unusable; reject it and carry on with the others."""


class FatalError(QuantumError):
    """The process must stop; ``exit_code`` is what it exits with."""

    exit_code: int = EX_FAILURE


class ConfigError(FatalError, ValueError):
    """The configuration is unusable; the message names the key."""

    exit_code = EX_CONFIG
