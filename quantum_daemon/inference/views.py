"""What the inference step shows: its status section and its HTTP routes
(``/api/trust``, ``/api/signals``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from quantum_daemon.core.ensemble import signal_json
from quantum_daemon.domain.config import Config
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference.bookkeeping import Bookkeeper
from quantum_daemon.inference.context import InferenceState, configured_series, stream_signal
from quantum_daemon.inference.metrics import InferenceMetrics
from quantum_daemon.inference.serving import Server
from quantum_daemon.storage.trust_store import TrustStore
from quantum_daemon.web.responses import int_query, json_response


class InferenceViews:
    """Read-only views of the state that serving and bookkeeping keep."""

    def __init__(
        self,
        cfg: Config,
        client: aioredis.Redis,
        state: InferenceState,
        server: Server,
        books: Bookkeeper,
        trust: TrustStore,
        metrics: InferenceMetrics,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.keys = Keys(cfg.redis.prefix)
        self.state = state
        self.server = server
        self.books = books
        self.trust = trust
        self.metrics = metrics

    def status(self) -> dict[str, Any]:
        state, link = self.state, self.server.link
        window = self.metrics.latency_window
        return {
            "summary": (
                f"{len(state.loaded)} models loaded, {len(state.live_families)} families live, "
                f"{state.totals.signals} signals, {state.totals.scored} scored"
            ),
            "worker": {"pid": link.pid, "ready": link.ready.is_set(), "restarts": link.restarts},
            "models": [asdict(m) for m in state.loaded],
            "live_families": list(state.live_families),
            "weights": state.weights,
            "latency_ms": {
                "p50": round(window.quantile(0.5) * 1000, 3),
                "p99": round(window.quantile(0.99) * 1000, 3),
            },
            "series": {
                f"{s}:{t}": {"last_ts": ts, "waiting": (s, t) in self.server.waiting}
                for (s, t), ts in state.last_ts.items()
            },
            "backlog": self.books.work.qsize(),
            # series whose published position the kill switch holds at 0, and why
            "killed": {f"{s}:{t}": reason for (s, t), reason in sorted(state.killed.items())},
            # why each model with candidates is or is not live: its record rule
            "records": {
                model_id: {
                    "passed": gate.passed,
                    "detail": gate.detail,
                    **({} if evidence is None else evidence.to_dict()),
                }
                for model_id, (gate, evidence) in sorted(state.records.items())
            },
            "totals": asdict(state.totals),
        }

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/trust", self.trust_view), web.get("/api/signals", self.signals_view)]

    async def trust_view(self, request: web.Request) -> web.StreamResponse:
        """Current weights, their bounded history and each family's last updates."""
        events = int_query(request, "events", 10, 0, 100)
        if events is None:
            return json_response({"error": "events must be an integer in [0, 100]"}, 400)
        try:
            snapshot = await self.trust.snapshot(events_per_family=events)
        except (RedisError, OSError) as exc:
            return json_response({"error": f"redis unavailable: {exc}"}, 503)
        body = snapshot.as_json() | {
            "live_families": list(self.state.live_families),
            "learning_rate": self.cfg.trust.learning_rate,
            "share": self.cfg.trust.share,
        }
        return json_response(body)

    async def signals_view(self, request: web.Request) -> web.StreamResponse:
        """The latest signal and the last ``n`` of each series (``symbol``, ``tf`` filter)."""
        n = int_query(request, "n", 10, 1, 1000)
        if n is None:
            return json_response({"error": "n must be an integer in [1, 1000]"}, 400)
        symbol, tf = request.query.get("symbol"), request.query.get("tf")
        series = sorted(set(configured_series(self.cfg)) | set(self.state.last_ts))
        body: dict[str, Any] = {}
        try:
            for s, t in series:
                if symbol in (None, s) and tf in (None, t):
                    entries = await self.client.xrevrange(self.keys.signals(s, t), count=n)
                    recent = [signal_json(stream_signal(fields)) for _, fields in entries or ()]
                    body[f"{s}:{t}"] = {"latest": recent[0] if recent else None, "recent": recent}
        except (RedisError, OSError) as exc:
            return json_response({"error": f"redis unavailable: {exc}"}, 503)
        return json_response({"n": n, "signals": body})
