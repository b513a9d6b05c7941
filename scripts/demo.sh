#!/usr/bin/env bash
# The demo: set up .venv, start a private Redis unless QUANTUM_REDIS_URL is set,
# run the daemon on the bundled real bars, print a live summary; Ctrl-C stops
# everything cleanly. Extra arguments go to scripts/demo.py (see --help).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$REPO_ROOT"

ensure_venv "models"
[ -n "${QUANTUM_REDIS_URL:-}" ] || ensure_redis_server
exec "$VENV/bin/python" scripts/demo.py "$@"
