"""The operator dashboard (DESIGN §8): the lifecycle events and the equity
curves as JSON, and one self-contained HTML page that draws them.

- ``GET /api/events?n=100&type=model.``: the last ``n`` events of
  ``quantum:events``, newest first, optionally only the types that start
  with ``type``; 503 with the reason while Redis does not answer.
- ``GET /api/equity?model_id=ID``: the compounded test-window equity of the
  strategy and of buy-and-hold for the model's active version and its newest
  candidate (else its latest rejected version), from the ``returns.csv`` that
  ``offline.train_offline`` keeps in each version folder, at most
  ``EQUITY_POINTS`` points each; 400 for an id that ``domain.ids`` refuses
  (a NUL, a ``/``, too long), 404 for a model the registry does not know.
  Error bodies name no path of the data dir.
- ``GET /`` and ``GET /dashboard``: ``static/dashboard.html`` (no external
  assets: inline CSS and JS, SVG plots), which polls the JSON routes.

Everything here only reads; files are read in a thread.
"""

from __future__ import annotations

import asyncio
import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from quantum_daemon.domain.ids import BadIdentifier, check_model_id
from quantum_daemon.domain.keys import Keys
from quantum_daemon.domain.stages import Stage
from quantum_daemon.storage.registry.registry import Registry, RegistryError
from quantum_daemon.web.responses import int_query, json_response, without_paths

RETURNS_FILE = "returns.csv"  # written by offline.train_offline (its RETURNS_FILE)
EQUITY_POINTS = 500
EVENTS_DEFAULT, EVENTS_MAX = 100, 1000
SCAN_PAGE = 500
SCAN_LIMIT = 20_000  # entries looked at for a filtered query (the stream keeps ~10,000)
PAGE = "dashboard.html"


@dataclass(frozen=True)
class Dashboard:
    """The dashboard's routes, on the daemon's Redis client and registry."""

    client: aioredis.Redis
    keys: Keys
    data_dir: Path

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page),
            web.get("/dashboard", self.page),
            web.get("/api/events", self.events),
            web.get("/api/equity", self.equity),
        ]

    async def page(self, _: web.Request) -> web.StreamResponse:
        html = await asyncio.to_thread(page_html)
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    async def events(self, request: web.Request) -> web.StreamResponse:
        n = int_query(request, "n", EVENTS_DEFAULT, 1, EVENTS_MAX)
        if n is None:
            return json_response({"error": f"n must be an integer in [1, {EVENTS_MAX}]"}, 400)
        prefix = request.query.get("type", "")
        try:
            found = await recent_events(self.client, self.keys.events, n, prefix)
        except (RedisError, OSError) as exc:
            return json_response({"error": f"redis unavailable: {exc}"}, 503)
        return json_response({"n": n, "type": prefix, "events": found})

    async def equity(self, request: web.Request) -> web.StreamResponse:
        model_id = request.query.get("model_id", "")
        if not model_id:
            return json_response({"error": "model_id is required"}, 400)
        try:
            check_model_id(model_id)
        except BadIdentifier as exc:
            return json_response({"error": str(exc)}, 400)
        try:
            body = await asyncio.to_thread(equity_view, Registry(self.data_dir), model_id)
        except RegistryError as exc:
            return json_response({"error": without_paths(str(exc), self.data_dir)}, 404)
        return json_response(body)


def page_html() -> str:
    return resources.files("quantum_daemon.web").joinpath("static", PAGE).read_text("utf-8")


# -- events ---------------------------------------------------------------------


async def recent_events(
    client: aioredis.Redis, stream: str, n: int, prefix: str = ""
) -> list[dict[str, Any]]:
    """The newest ``n`` entries whose type starts with ``prefix``, newest first:
    pages of XREVRANGE until enough match or the stream is read through."""
    found: list[dict[str, Any]] = []
    high, seen = "+", 0
    while len(found) < n and seen < SCAN_LIMIT:
        count = n if not prefix else SCAN_PAGE
        page = await client.xrevrange(stream, max=high, min="-", count=count) or []
        for entry_id, fields in page:
            event = event_json(entry_id, fields)
            if event["type"].startswith(prefix) and len(found) < n:
                found.append(event)
        seen += len(page)
        if len(page) < count:
            break
        high = "(" + _text(page[-1][0])
    return found


def event_json(entry_id: Any, fields: Any) -> dict[str, Any]:
    """One stream entry as ``{id, type, data}``; a ``data`` that is not JSON
    is passed on as text, so one bad entry does not hide the others."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    raw = text.get("data", "null")
    try:
        data = json.loads(raw)
    except ValueError:
        data = raw
    return {"id": _text(entry_id), "type": text.get("type", ""), "data": data}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- equity ---------------------------------------------------------------------


def equity_view(registry: Registry, model_id: str) -> dict[str, Any]:
    """The curves of the active version and its challenger (reads files)."""
    shown = registry.show(model_id)
    return {
        "model_id": model_id,
        "family": shown["family"],
        "symbol": shown["symbol"],
        "tf": shown["tf"],
        "curves": [
            version_curve(registry.version_path(model_id, entry["version"]), role, entry)
            for role, entry in compared_versions(shown["versions"])
        ],
    }


def compared_versions(versions: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(role, entry) of the active version and the newest candidate, or the
    newest rejected version when there is no candidate (oldest first in)."""
    by_stage: dict[str, dict[str, Any]] = {}
    for entry in versions:  # sorted by version name, that is by time
        by_stage[entry["stage"]] = entry
    chosen = [(Stage.ACTIVE, by_stage.get(Stage.ACTIVE))]
    challenger = by_stage.get(Stage.CANDIDATE) or by_stage.get(Stage.REJECTED)
    if challenger is not None:
        chosen.append((challenger["stage"], challenger))
    return [(role, entry) for role, entry in chosen if entry is not None]


def version_curve(folder: Path, role: str, entry: dict[str, Any]) -> dict[str, Any]:
    metrics = entry.get("metrics") or {}
    curve: dict[str, Any] = {
        "role": role,
        "version": entry["version"],
        "stage": entry["stage"],
        "metrics": {k: metrics.get(k) for k in ("sharpe", "dsr", "trades", "total_return")},
    }
    try:
        ts, strategy, buy_and_hold = read_returns(folder / RETURNS_FILE)
    except FileNotFoundError:
        return curve | {"error": f"no {RETURNS_FILE} (a version trained before it was kept)"}
    except ValueError as exc:
        return curve | {"error": f"{RETURNS_FILE} unreadable: {exc}"}
    keep = downsample(len(ts), EQUITY_POINTS)
    return curve | {
        "bars": len(ts),
        "ts": ts[keep].tolist(),
        "strategy": np.cumprod(1.0 + strategy)[keep].tolist(),
        "buy_and_hold": np.cumprod(1.0 + buy_and_hold)[keep].tolist(),
    }


def read_returns(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ts, strategy, buy_and_hold) of a ``returns.csv``; ValueError if malformed."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        ts = np.array([int(r["ts"]) for r in rows], dtype=np.int64)
        strategy = np.array([float(r["strategy"]) for r in rows])
        buy_and_hold = np.array([float(r["buy_and_hold"]) for r in rows])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"missing column {exc}") from None
    return ts, strategy, buy_and_hold


def downsample(n: int, points: int) -> np.ndarray:
    """At most ``points`` indices spread evenly over ``range(n)``, first and last kept."""
    if n <= points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, points).round().astype(np.int64))
