"""A small server-sent-events reader for the tests: it parses the wire
format as a browser's EventSource does (fields, comments, the last event id
that an id-only block sets too)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SseEvent:
    event: str
    data: str
    id: str

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseReader:
    """Reads one response; ``last_id`` is what a reconnect would send."""

    response: aiohttp.ClientResponse
    last_id: str = ""
    comments: list[str] = field(default_factory=list)
    retry_ms: int | None = None

    async def events(self) -> AsyncIterator[SseEvent]:
        event, data, block_id = "", [], None
        async for raw in self.response.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if block_id is not None:
                    self.last_id = block_id
                if data:
                    yield SseEvent(event or "message", "\n".join(data), self.last_id)
                event, data, block_id = "", [], None
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                block_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)

    async def take(self, n: int) -> list[SseEvent]:
        """The next ``n`` events."""
        taken: list[SseEvent] = []
        if n == 0:
            return taken
        async with contextlib.aclosing(self.events()) as events:
            async for item in events:
                taken.append(item)
                if len(taken) == n:
                    break
        return taken
