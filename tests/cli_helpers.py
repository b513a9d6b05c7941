"""Run the real ``quantum-daemon`` CLI in a subprocess, on ``tmp_path/config.toml``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quantum_daemon", "--config", str(tmp_path / "config.toml"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
