"""Secrets never leave the process: one redaction for every output.

``Redactor(secrets)`` replaces with ``***``:

- the password of a URL's user info, any scheme (``redis://user:PASSWORD@host``);
- the value of a credential parameter in a query string or ``key=value`` text
  (``?password=...``, ``&token=...``, ``secret=``, ``api_key=``...), and of an
  ``Authorization: Bearer ...`` header;
- every configured secret (the API token, the Redis password, a password taken
  from the Redis URL) wherever it appears, verbatim or JSON-, repr- or
  percent-escaped. A secret shorter than ``MIN_LITERAL`` characters is hidden
  in the two places above only: replacing it everywhere would mangle every line.

Every output goes through it: log lines and tracebacks (``runtime/logs.py``),
every HTTP body (``web/api.py``: ``/api/status``, ``/metrics``...), the
``status`` and ``check-config`` commands, and the CLI's error messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

MASK = "***"
MIN_LITERAL = 4

# scheme://user:PASSWORD@ ; the password stops where RFC 3986 says it must.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s'\"<>]*:)(?P<secret>[^/?#@\s'\"<>]+)(?=@)"
)
# password=..., token=..., in a query string or any key=value text. The value
# stops at a backslash so that a JSON escape (\") is never cut in half.
CREDENTIAL_KEYS = (
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "access_token",
    "auth_token",
    "secret",
    "api_key",
    "apikey",
    "requirepass",
)
_CREDENTIAL_PARAM = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_])(?:"
    + "|".join(CREDENTIAL_KEYS)
    + r")=)(?P<secret>[^&;,\s'\"<>#\\]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)(?P<secret>[^\s'\",;]+)", re.IGNORECASE)
_PATTERNS = (_URL_PASSWORD, _CREDENTIAL_PARAM, _BEARER)


class Redactor:
    """Hides the known ``secrets`` and the credential patterns above."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        literals = {variant for s in secrets if len(s) >= MIN_LITERAL for variant in _variants(s)}
        # Longest first: a secret that contains another is hidden whole.
        ordered = sorted(literals, key=len, reverse=True)
        self._literals = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        """``text`` with every secret in it replaced by ``***``."""
        for pattern in _PATTERNS:
            text = pattern.sub(_mask_secret, text)
        if self._literals is not None:
            text = self._literals.sub(MASK, text)
        return text

    def value(self, obj: Any) -> Any:
        """A copy of ``obj`` (JSON-like: dicts, lists, tuples, strings) with
        every string redacted; other values are returned as they are."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, Mapping):
            return {self.value(k): self.value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.value(v) for v in obj)
        return obj


def url_secrets(url: str) -> tuple[str, ...]:
    """The password in a URL's user info and in its credential parameters."""
    found: list[str] = []
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        found += [password, unquote(password)]
    found += [unquote(m.group("secret")) for m in _CREDENTIAL_PARAM.finditer(url)]
    found += [m.group("secret") for m in _CREDENTIAL_PARAM.finditer(url)]
    return tuple(dict.fromkeys(s for s in found if s))


def _mask_secret(match: re.Match[str]) -> str:
    return match.group("head") + MASK


def _variants(secret: str) -> set[str]:
    """The forms a secret takes in our outputs: raw, in JSON, in a repr, in a URL."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        quote(secret, safe=""),
    } - {""}
