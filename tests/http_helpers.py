"""HTTP probes of a daemon under test: a slow answer (a loaded machine) is
no answer, never an error of the test."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, body); (0, None) when nothing answered in time."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, None


def wait_code(url: str, code: int, timeout: float = 15.0) -> Any:
    """The body of the first answer with status ``code`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    last: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        last = get_json(url)
        if last[0] == code:
            return last[1]
        time.sleep(0.1)
    raise AssertionError(f"{url} never returned {code}; last {last}")
