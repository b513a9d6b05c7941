"""JSON response and query helpers for the routes that services contribute.

This module imports no service, so services can use it while ``web.api``
(which serves their routes) may import services.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int | None:
    """An integer query parameter in [low, high]; ``default`` when absent,
    None when malformed or out of range (the caller answers 400)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if low <= value <= high else None


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, default=str), status=status, content_type="application/json"
    )


def without_paths(message: str, data_dir: Path) -> str:
    """``message`` with the data dir (absolute, and as configured when that
    is a path with a folder in it) written as ``data_dir``: answers must not
    tell a client where the files live."""
    forms = {str(Path(data_dir).resolve())}
    if "/" in str(data_dir):
        forms.add(str(data_dir))
    for form in sorted(forms, key=len, reverse=True):
        message = message.replace(form, "data_dir")
    return message
