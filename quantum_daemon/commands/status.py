"""``quantum-daemon status``: is the daemon alive and ready?

Reads the heartbeat key in Redis and the API's ``/readyz`` and ``/api/status``.
Exit 0 when healthy (fresh heartbeat and ready), 1 otherwise. Several daemons
may share the Redis (docs/scaling.md, "Ownership"): ``daemons`` lists every
one's own heartbeat (``quantum:daemon:heartbeat:{instance}``) with the series
it owns, and ``owners`` each series' lease. The report is
printed through the config's redaction (``domain/secrets.py``): an error
message that quotes the Redis URL shows no password.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from quantum_daemon.domain.errors import EX_FAILURE, EX_OK


def register(sub: Any) -> None:
    parser = sub.add_parser("status", help="report the running daemon's health (exit 0 healthy)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per probe")
    parser.set_defaults(func=status)


def status(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import load_config
    from quantum_daemon.domain.config import redactor

    cfg = load_config(args)
    heartbeat = read_heartbeat(cfg, args.timeout)
    api_host = "127.0.0.1" if cfg.api.host in ("0.0.0.0", "::") else cfg.api.host
    base = f"http://{api_host}:{cfg.api.port}"
    ready_code, ready_body = http_get_json(f"{base}/readyz", args.timeout)
    _, status_body = http_get_json(f"{base}/api/status", args.timeout)
    healthy = heartbeat.get("alive", False) and ready_code == 200
    report = {
        "healthy": healthy,
        "heartbeat": heartbeat,
        **read_daemons(cfg, args.timeout),
        "readyz": ready_body,
        "status": status_body,
    }
    text = json.dumps(report, indent=None if args.json else 2, default=str)
    print(redactor(cfg)(text))
    return EX_OK if healthy else EX_FAILURE


def read_heartbeat(cfg: Any, timeout: float) -> dict[str, Any]:
    import redis

    from quantum_daemon.domain.keys import Keys

    client = redis.Redis.from_url(
        cfg.redis.url,
        **cfg.redis.client_options(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        raw = client.get(Keys(cfg.redis.prefix).heartbeat)
        ttl_ms = client.pttl(Keys(cfg.redis.prefix).heartbeat)
    except (redis.RedisError, OSError) as exc:
        return {"alive": False, "error": f"redis: {exc}"}
    finally:
        client.close()
    if raw is None:
        return {"alive": False, "error": "no heartbeat key (daemon not running or expired)"}
    return {"alive": True, "ttl_ms": ttl_ms, **json.loads(raw)}


def read_daemons(cfg: Any, timeout: float) -> dict[str, Any]:
    """Every daemon's own heartbeat, and the owner of every series' lease."""
    import redis

    from quantum_daemon.domain.keys import Keys

    keys = Keys(cfg.redis.prefix)
    client = redis.Redis.from_url(
        cfg.redis.url,
        **cfg.redis.client_options(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )
    try:
        daemons = []
        for key in sorted(client.scan_iter(match=keys.heartbeat_pattern, count=1000)):
            raw, ttl_ms = client.get(key), client.pttl(key)
            if raw is not None:
                daemons.append({"key": key, "ttl_ms": ttl_ms, **json.loads(raw)})
        owners: dict[str, str] = {}
        for key in sorted(client.scan_iter(match=keys.owner_pattern, count=1000)):
            series = keys.parse_owner(key)
            value = client.get(key)
            if series is not None and value is not None:
                owners[":".join(series)] = str(value).rpartition(" ")[0]
    except (redis.RedisError, OSError) as exc:
        return {"daemons": [], "owners": {}, "daemons_error": f"redis: {exc}"}
    finally:
        client.close()
    return {"daemons": daemons, "owners": owners}


def http_get_json(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 0, {"error": f"{url}: {exc}"}
