#!/usr/bin/env bash
# Run the whole test suite: creates .venv if needed, installs with test extras,
# checks lint and types, then runs pytest (extra arguments go to pytest).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$REPO_ROOT"

ensure_venv "models,test"
ensure_redis_server
ensure_chromium
ensure_systemd_analyze

export PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
echo "==> ruff"
"$VENV/bin/ruff" check quantum_daemon quantum_daemon_dev tests scripts integrations
echo "==> mypy"
"$VENV/bin/mypy"
echo "==> pytest"
exec "$VENV/bin/pytest" "$@"
