#!/usr/bin/env bash
# The demo: set up .venv, make sure a redis-server exists; scripts/demo.py then
# starts a private Redis (unless QUANTUM_REDIS_URL is set) and the daemon,
# publishes the bundled bars' history at once and their tail one bar per
# series every --pace seconds, and prints a live summary; Ctrl-C (or
# --seconds) stops everything cleanly and prints the counts of the run.
# Extra arguments go to scripts/demo.py (see --help; README "The demo").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$REPO_ROOT"

ensure_venv "models"
[ -n "${QUANTUM_REDIS_URL:-}" ] || ensure_redis_server
exec "$VENV/bin/python" scripts/demo.py "$@"
