"""Tiny top-level job functions for the training pool tests (importable by
spawn workers): they echo, sleep, raise, or kill their own process."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any


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
        "nice": os.nice(0),
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


# -- lifecycle jobs: real version folders without a model library ----------------

FAKE_METRICS_FILE = "fake_metrics.json"


def fake_train(spec: Any) -> Any:
    """Stands in for ``run_job``: writes a real version folder whose metrics
    come from ``data_dir/fake_metrics.json`` (``{family: metrics}``, a
    ``"crash"`` value kills the worker), compares with the active version by
    the metrics' ``sharpe``."""
    import json
    from pathlib import Path

    from quantum_daemon.core.promotion import HeadToHead
    from quantum_daemon.storage import artifacts
    from quantum_daemon.training.jobs import TrainJobResult

    plan = json.loads((Path(spec.data_dir) / FAKE_METRICS_FILE).read_text())
    metrics = plan[spec.family]
    if metrics == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if metrics == "hang":
        time.sleep(600)

    def files(folder: Path) -> list[Path]:
        (folder / "weights.bin").write_bytes(os.urandom(64))
        return [folder / "weights.bin"]

    window = {"bars": {"first_ts": int(spec.bars.ts[0]), "last_ts": int(spec.bars.ts[-1])}}
    meta = {"family": spec.family, "symbol": spec.symbol, "tf": spec.tf, "metrics": metrics,
            "data_window": window}  # fmt: skip
    stored = artifacts.write_version(
        Path(spec.data_dir), spec.model_id, files, meta, spec.version_time
    )
    h2h = None
    if spec.active is not None:
        old = artifacts.read_metadata(Path(spec.active.path))["metrics"]
        h2h = HeadToHead(spec.active.version, 100, 0, 1, metrics["sharpe"], old["sharpe"])
    return TrainJobResult(spec.job_id, spec.model_id, spec.family, spec.symbol, spec.tf,
                          stored.version, str(stored.path), metrics, h2h, 0.01, len(spec.bars),
                          os.getpid())  # fmt: skip


def fake_train_noting_signals(spec: Any) -> Any:
    """``fake_train``, after writing the recorded signals the spec carried
    (``None`` or ts / mu / skipped) to ``data_dir/signals_seen_{family}.json``."""
    import json
    from pathlib import Path

    seen = None
    if spec.signals is not None:
        recorded = spec.signals
        seen = {"ts": recorded.ts.tolist(), "mu": recorded.mu.tolist(), "skipped": recorded.skipped}
    (Path(spec.data_dir) / f"signals_seen_{spec.family}.json").write_text(json.dumps(seen))
    return fake_train(spec)


def cuda_probe(spec: Spec) -> dict[str, object]:
    """What torch sees of the GPU from inside a worker."""
    import torch

    return {
        "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "available": torch.cuda.is_available(),
        "devices": torch.cuda.device_count(),
    }
