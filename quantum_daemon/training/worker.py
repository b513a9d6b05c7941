"""The worker-process side: initializer and serve loop of one spawn worker.

This module is the first one a spawn child imports, before any job: it must
not import numpy, torch or a model library at module level, so that the
thread-count variables set by ``initialize_worker`` are in place when they
are first read.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


@dataclass(frozen=True)
class TrainingWorkerSettings:
    name: str
    threads: int = 1
    seed: int = 42
    log_level: str = "info"
    log_format: str = "json"
    use_gpu: bool = False  # CPU workers hide the GPU so that torch never takes it
    nice: int = 10  # below the daemon: its event loop preempts training on a busy machine


def initialize_worker(settings: TrainingWorkerSettings) -> None:
    """Per-process set-up: ignore Ctrl-C (the daemon decides when workers
    stop), lower the CPU priority, pin thread counts, hide the GPU from CPU
    workers, configure logging, seed the global RNG."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if settings.nice:
        os.nice(settings.nice)
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(settings.threads)
    os.environ["QUANTUM_WORKER_THREADS"] = str(settings.threads)
    if not settings.use_gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from quantum_daemon.runtime.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)  # type: ignore[arg-type]
    import structlog

    structlog.contextvars.bind_contextvars(worker=settings.name, worker_pid=os.getpid())
    random.seed(settings.seed)


# Replies on the pipe: ("ok", result) or ("error", "Type: message", traceback text).
Reply = tuple[str, Any] | tuple[str, str, str]


def worker_main(conn: Connection, settings: TrainingWorkerSettings) -> None:
    """Entry point of a spawn worker: run jobs from ``conn`` until it closes
    or a ``None`` arrives."""
    initialize_worker(settings)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, spec = message
        conn.send_bytes(encode(call(fn, spec)))


def call(fn: Callable[[Any], Any], spec: Any) -> Reply:
    try:
        result = fn(spec)
    except BaseException as exc:  # the job's failure is its result, the worker lives on
        return ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return ("ok", result)


def encode(reply: Reply) -> bytes:
    try:
        return pickle.dumps(reply)
    except Exception as exc:
        return pickle.dumps(("error", f"result cannot be pickled: {exc!r}", ""))
