"""A real multi-node Ray cluster on this machine, for the Ray tests.

``RayCluster`` starts a head node (no CPUs: it runs no task) and a worker
node (``ray start --address``, its own temporary dir and working dir), each
a ``ray start --block`` process in its own process group, so that a node is
stopped or killed by its own id. Every Python process of the nodes imports
the ``sitecustomize`` written here (first on their ``PYTHONPATH``): an audit
hook (``sys.addaudithook``) that records each file event on a path under the
forbidden folder (the daemon's data dir) and marks the process as audited.

The job functions at the end run on the worker node.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 80 * 2**20

# Audit hook of the nodes' Python processes (sitecustomize is imported at start-up).
SITECUSTOMIZE = """
import os, sys

_ROOT = os.environ.get("QD_AUDIT_FORBIDDEN")
_OUT = os.environ.get("QD_AUDIT_DIR")
_FILE_EVENTS = ("open", "os.", "shutil.", "glob.", "pathlib.", "sqlite3.connect")

if _ROOT and _OUT:
    _root = os.path.normpath(_ROOT)
    _busy = []

    def _under_root(arg):
        if not isinstance(arg, (str, bytes, os.PathLike)):
            return None
        try:
            path = os.fsdecode(arg)
        except (TypeError, ValueError):
            return None
        path = os.path.normpath(os.path.join(os.getcwd(), path))
        return path if path == _root or path.startswith(_root + os.sep) else None

    def _hook(event, args):
        if _busy or not event.startswith(_FILE_EVENTS):
            return
        for arg in args:
            path = _under_root(arg)
            if path is not None:
                _busy.append(1)
                try:
                    with open(os.path.join(_OUT, "opened", f"{os.getpid()}.log"), "a") as fh:
                        fh.write(f"{event} {path}\\n")
                finally:
                    _busy.pop()
                return

    os.makedirs(os.path.join(_OUT, "opened"), exist_ok=True)
    os.makedirs(os.path.join(_OUT, "installed"), exist_ok=True)
    open(os.path.join(_OUT, "installed", str(os.getpid())), "w").close()
    sys.addaudithook(_hook)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reload_ray_auth() -> None:
    """Ray caches the auth mode and token per process; a Ray without token
    authentication (before 2.5x) has nothing to reload."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the node's whole process group (its raylet, its workers)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class RayCluster:
    """Head + worker node on this machine; ``forbidden`` is audited on the nodes."""

    def __init__(self, root: Path, forbidden: Path, worker_gpus: int = 1) -> None:
        self.root = root
        self.forbidden = forbidden
        self.worker_gpus = worker_gpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.audit = root / "audit"
        self.site = root / "site"
        self.head: Node | None = None
        self.worker: Node | None = None
        self._workers_started = 0
        # its own token: not ~/.ray/auth_token, which any local ray.init may replace
        self.token = secrets.token_hex(32)

    def env(self) -> dict[str, str]:
        repo = str(Path(__file__).resolve().parents[1])
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(self.site), repo]),
            "QD_AUDIT_FORBIDDEN": str(self.forbidden),
            "QD_AUDIT_DIR": str(self.audit),
            "RAY_USAGE_STATS_ENABLED": "0",
            **self.auth_env(),
            "OMP_NUM_THREADS": "1",
        }

    def auth_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def connect(self, ray: Any) -> None:
        """Join the cluster from this process (the daemon side) with its token."""
        os.environ.update(self.auth_env())
        reload_ray_auth()
        ray.init(address=self.address, log_to_driver=False)

    def disconnect(self, ray: Any, saved_env: dict[str, str | None]) -> None:
        ray.shutdown()
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        reload_ray_auth()

    def start(self) -> None:
        self.site.mkdir(parents=True)
        (self.site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.audit.mkdir()
        self.head = self._start(
            "head",
            ["--head", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0"],
            ["--include-dashboard=false"],
        )
        self.start_worker()

    def start_worker(self) -> None:
        """A (new) worker node with one CPU and ``worker_gpus`` GPUs."""
        self._workers_started += 1
        name = f"worker{self._workers_started}"
        self.worker = self._start(
            name,
            [f"--address={self.address}", "--num-cpus=1", f"--num-gpus={self.worker_gpus}"],
            [],
        )

    def _start(self, name: str, role: list[str], extra: list[str]) -> Node:
        temp_dir = self.root / f"t-{name}"  # short: Ray's socket paths must stay short
        cwd = self.root / f"cwd-{name}"
        cwd.mkdir()
        log = self.root / f"{name}.log"
        args = [
            RAY, "start", *role, "--block", "--disable-usage-stats",
            f"--temp-dir={temp_dir}", f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--include-log-monitor=false", *extra,
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(
                args, env=self.env(), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return Node(process, log)

    def wait_for_cpus(self, ray: Any, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ray.available_resources().get("CPU", 0) >= 1:
                return
            time.sleep(0.5)
        raise AssertionError(f"no worker node joined within {timeout_s}s: {self.logs()}")

    def stop(self) -> None:
        for node in (self.worker, self.head):
            if node is not None:
                node.stop()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.root.glob("*.log"))

    def audited_pids(self) -> set[int]:
        return {int(p.name) for p in (self.audit / "installed").iterdir()}

    def forbidden_opens(self) -> list[str]:
        lines: list[str] = []
        for log in sorted((self.audit / "opened").glob("*.log")):
            lines += [f"pid {log.stem}: {line}" for line in log.read_text().splitlines()]
        return lines

    def clear_forbidden_opens(self) -> None:
        for log in (self.audit / "opened").glob("*.log"):
            log.unlink()


# -- job functions run on the worker node ----------------------------------------


@dataclass(frozen=True)
class PathProbe:
    path: str


def open_path(probe: PathProbe) -> int:
    """A worker that does read the daemon's disk: the audit must see it."""
    return len(Path(probe.path).read_bytes())


@dataclass(frozen=True)
class Probe:
    pass


def assigned_resources(probe: Probe) -> dict[str, Any]:
    import ray

    return {
        "resources": ray.get_runtime_context().get_assigned_resources(),
        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }


def train_then_hang(spec: Any) -> Any:
    """Writes a whole version folder in the job's data dir, marks that it
    did, then hangs: the node is killed before anything comes back."""
    from quantum_daemon.storage import artifacts

    def files(folder: Path) -> list[Path]:
        (folder / "weights.bin").write_bytes(os.urandom(64))
        return [folder / "weights.bin"]

    meta = {"family": spec.family, "symbol": spec.symbol, "tf": spec.tf, "metrics": {}}
    artifacts.write_version(Path(spec.data_dir), spec.model_id, files, meta, spec.version_time)
    Path(spec.params["marker"]).write_text(str(os.getpid()))
    time.sleep(600)


HUNG_MARKER = "lgbm-hung"  # in the audit dir: the first lgbm job is hanging


def lgbm_hangs_once(spec: Any) -> Any:
    """``run_job``, except that the first lgbm job of the cluster hangs
    (until its node is killed)."""
    from quantum_daemon.training.jobs import run_job

    marker = Path(os.environ["QD_AUDIT_DIR"]) / HUNG_MARKER
    if spec.family == "lgbm" and not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(600)
    return run_job(spec)
