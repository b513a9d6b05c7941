"""``/api/trust`` and ``/api/signals`` serve what Redis holds, as JSON; the
service's metrics and status report the signals and their latency."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import aiohttp
import redis

from quantum_daemon.domain.config import ApiConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.web.api import ApiServer
from tests.inference_helpers import Feeder, inference, make_config
from tests.planted_family import install_version, planted_market

KEYS = Keys()


class Source:
    def readiness(self) -> tuple[bool, str]:
        return True, "ok"

    def status(self) -> dict[str, Any]:
        return {}

    def metrics_text(self) -> bytes:
        return b""


def test_trust_and_signals_routes_serve_json(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bars = planted_market(30, 2)
    install_version(tmp_path, "xgb", {})
    install_version(tmp_path, "nhits", {"until_ts": 0})

    async def scenario() -> tuple[dict[str, Any], ...]:
        cfg = make_config(redis_url, tmp_path)
        async with inference(cfg, ("xgb", "nhits")) as (service, store):
            await Feeder(service, store, bars).feed(30)
            status = service.status()
            async with ApiServer(ApiConfig(port=0), Source(), service.routes()) as api:
                base = f"http://127.0.0.1:{api.port}"
                async with aiohttp.ClientSession() as http:
                    trust = await (await http.get(f"{base}/api/trust?events=3")).json()
                    signals = await (await http.get(f"{base}/api/signals?n=5")).json()
                    filtered = await (await http.get(f"{base}/api/signals?symbol=NONE")).json()
                    bad = await http.get(f"{base}/api/signals?n=zero")
                    assert bad.status == 400
            return trust, signals, filtered, status

    trust, signals, filtered, status = asyncio.run(scenario())
    weights = {f: float(redis_client.get(KEYS.trust(f))) for f in ("xgb", "nhits")}
    assert trust["weights"] == weights
    assert trust["live_families"] == ["nhits", "xgb"]
    assert len(trust["events"]["xgb"]) == 3
    assert trust["history"]["xgb"][-1][1] == weights["xgb"]
    series = signals["signals"]["TESTUSDT:1h"]
    assert series["latest"]["ts"] == int(bars.ts[29])
    assert [s["ts"] for s in series["recent"]] == [int(t) for t in bars.ts[29:24:-1]]
    assert {c["family"] for c in series["latest"]["contributions"]} == {"xgb", "nhits"}
    assert filtered["signals"] == {}
    assert status["totals"]["signals"] == 30
    assert status["latency_ms"]["p99"] > 0 and math.isfinite(status["latency_ms"]["p99"])
