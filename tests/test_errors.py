"""The error taxonomy: which errors are fatal, and what they exit with."""

from __future__ import annotations

from quantum_daemon.domain.config import EX_CONFIG, ConfigError
from quantum_daemon.domain.errors import BadDataError, FatalError, TransientError
from quantum_daemon.training.executor import JobOutcome, PoolCrashLoop


def test_a_config_error_is_fatal_and_exits_78() -> None:
    error = ConfigError("config key 'api.port' must be a TCP port")
    assert isinstance(error, FatalError) and isinstance(error, ValueError)
    assert error.exit_code == EX_CONFIG == 78


def test_the_training_pool_crash_loop_is_fatal() -> None:
    error = PoolCrashLoop(JobOutcome("job-1", "crashed", reason="boom"), 6, 300.0)
    assert isinstance(error, FatalError) and isinstance(error, RuntimeError)
    assert error.exit_code == 1


def test_the_three_kinds_are_distinct() -> None:
    assert not issubclass(TransientError, FatalError | BadDataError)
    assert not issubclass(BadDataError, FatalError | TransientError)
    assert not issubclass(FatalError, TransientError | BadDataError)
