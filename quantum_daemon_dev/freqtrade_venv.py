"""A Freqtrade virtual environment of its own, built once from PyPI and reused.

Freqtrade's venv never has quantum_daemon in it, as a user's would not: the
integration (``integrations/freqtrade``) is tested by running the real
``freqtrade`` from this venv. It lives under ``~/.cache/quantum_daemon``
(``QUANTUM_FREQTRADE_VENV`` overrides), keyed by the pinned version, and is
only marked ready once the install finished, so an interrupted build is
started over rather than used half-made.

    python -m quantum_daemon_dev.freqtrade_venv          # build (if needed), print its path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

FREQTRADE_VERSION = "2026.9"
# hyperopt's extra (optuna, scikit-learn) so that the tests can run a hyperopt too
REQUIREMENT = "freqtrade[hyperopt]=={version}"
READY_MARK = ".quantum-ready"
PYPI_PROBE = "https://pypi.org/simple/freqtrade/"


class PypiUnreachable(RuntimeError):
    """PyPI cannot be reached, so the venv cannot be built here."""


def venv_dir(version: str = FREQTRADE_VERSION) -> Path:
    override = os.environ.get("QUANTUM_FREQTRADE_VENV")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "quantum_daemon" / f"freqtrade-{version}-venv"


def freqtrade_bin(venv: Path) -> Path:
    return venv / "bin" / "freqtrade"


def is_ready(venv: Path, version: str = FREQTRADE_VERSION) -> bool:
    """Built to the end, with this requirement (the mark holds it)."""
    mark = venv / READY_MARK
    if not (mark.exists() and freqtrade_bin(venv).exists()):
        return False
    return mark.read_text().split("\n")[0] == REQUIREMENT.format(version=version)


def pypi_reachable(timeout_s: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(PYPI_PROBE, timeout=timeout_s) as answer:
            return bool(answer.status == 200)
    except (TimeoutError, urllib.error.URLError, OSError):
        return False


def ensure_venv(version: str = FREQTRADE_VERSION) -> Path:
    """The venv's path, building it first where it is not ready.

    Raises ``PypiUnreachable`` only when a build is needed and PyPI does not
    answer; any failure of the install itself raises ``CalledProcessError``."""
    venv = venv_dir(version)
    if is_ready(venv, version):
        return venv
    if not pypi_reachable():
        raise PypiUnreachable(f"PyPI does not answer; cannot build {venv}")
    _build(venv, version)
    return venv


def _build(venv: Path, version: str) -> None:
    if venv.exists():
        shutil.rmtree(venv)  # a build that did not finish
    venv.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    subprocess.run([_python(), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    requirement = REQUIREMENT.format(version=version)
    subprocess.run([*pip, requirement], check=True)
    seconds = time.monotonic() - started
    (venv / READY_MARK).write_text(f"{requirement}\nbuilt in {seconds:.0f} s\n")


def ensure_redis_py(venv: Path) -> Path:
    """redis-py for Freqtrade's live mode, installed beside the venv (put it
    on ``PYTHONPATH``), so the venv itself stays as a backtesting user's:
    without it."""
    target = venv / "redis-py"
    if not (target / "redis").is_dir():
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--target",
                str(target),
                "redis",
            ],
            check=True,
        )
    return target


def _python() -> str:
    """The interpreter to build with: this one (Freqtrade needs Python 3.11+)."""
    return sys.executable


def main() -> int:
    started = time.monotonic()
    try:
        venv = ensure_venv()
    except PypiUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{venv} (ready after {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
