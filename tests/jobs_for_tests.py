"""Tiny top-level job functions for the training pool tests (importable by
spawn workers): they echo, sleep, raise, or kill their own process."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    value: int = 0
    seconds: float = 0.0


def echo(spec: Spec) -> dict[str, object]:
    """Returns what a job sees of its worker."""
    return {
        "value": spec.value,
        "pid": os.getpid(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def sleep(spec: Spec) -> int:
    time.sleep(spec.seconds)
    return spec.value


def fail(spec: Spec) -> None:
    raise ValueError(f"bad value {spec.value}")


def crash(spec: Spec) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def unpicklable_result(spec: Spec) -> object:
    return lambda: spec
