"""The dashboard serves the lifecycle events and the equity curves as JSON,
and one self-contained HTML page that polls every JSON route."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from quantum_daemon.core.promotion import Verdict
from quantum_daemon.domain.config import ApiConfig, EvaluationConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.offline import OfflineSpec, train_offline
from quantum_daemon.web.api import ApiServer
from quantum_daemon.web.dashboard import EQUITY_POINTS, RETURNS_FILE, Dashboard, compared_versions
from quantum_daemon.web.responses import json_response
from quantum_daemon_dev.redis_server import free_port
from tests.conftest import make_bars

KEYS = Keys()
MODEL = "evo_model_TESTUSDT_1h"
ROUTES_POLLED = (
    "/api/status",
    "/api/models",
    "/api/jobs",
    "/api/trust",
    "/api/signals",
    "/api/events",
    "/api/equity",
)
CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


class Source:
    def readiness(self) -> tuple[bool, str]:
        return True, "ok"

    def status(self) -> dict[str, Any]:
        return {
            "version": "test",
            "pid": 1,
            "uptime_s": 5.0,
            "ready": True,
            "reason": "ok",
            "redis": {"url": "redis://test", "up": True},
        }

    def metrics_text(self) -> bytes:
        return b""


@asynccontextmanager
async def served(
    redis_url: str, data_dir: Path, extra: Sequence[web.RouteDef] = ()
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """The dashboard's routes on a real server at a free port, and a client session."""
    client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=1)
    routes = [*Dashboard(client, KEYS, data_dir).routes(), *extra]
    try:
        async with ApiServer(ApiConfig(port=0), Source(), routes) as api:
            async with aiohttp.ClientSession() as http:
                yield http, f"http://127.0.0.1:{api.port}"
    finally:
        await client.aclose()


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


# -- /api/events ------------------------------------------------------------------


def publish(client: redis.Redis, types: list[str]) -> list[str]:
    """XADD one event per type (data: its index); the entry ids, oldest first."""
    pipe = client.pipeline(transaction=False)
    for i, kind in enumerate(types):
        pipe.xadd(KEYS.events, {"type": kind, "data": json.dumps({"i": i, "model_id": MODEL})})
    return [str(i) for i in pipe.execute()]


def test_events_are_newest_first_filtered_by_type_prefix_and_bounded(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    # 1,200 events; the model.* ones sit far apart, so a filtered query pages back.
    types = ["training.started"] * 1200
    for i in (0, 3, 700, 1199):
        types[i] = "model.promoted" if i % 2 else "model.evaluated"
    ids = publish(redis_client, types)
    redis_client.xadd(KEYS.events, {"type": "model.rejected", "data": "not json"})

    async def scenario() -> dict[str, Any]:
        async with served(redis_url, tmp_path) as (http, base):
            answers = {
                q: await get(http, f"{base}/api/events{q}")
                for q in ("", "?n=5", "?n=100&type=model.", "?type=model.promoted", "?n=1000")
            }
            for bad in ("?n=0", "?n=1001", "?n=five"):
                status, body = await get(http, f"{base}/api/events{bad}")
                assert status == 400 and "n must be" in body["error"]
            return answers

    answers = asyncio.run(scenario())
    assert all(status == 200 for status, _ in answers.values())
    default = answers[""][1]["events"]
    assert len(default) == 100
    assert default[0] == {"id": default[0]["id"], "type": "model.rejected", "data": "not json"}
    assert [e["id"] for e in default[1:]] == ids[::-1][:99]
    assert [e["id"] for e in answers["?n=5"][1]["events"]] == [default[0]["id"], *ids[::-1][:4]]
    model = answers["?n=100&type=model."][1]["events"]
    assert [e["type"] for e in model] == [
        "model.rejected",
        "model.promoted",
        "model.evaluated",
        "model.promoted",
        "model.evaluated",
    ]
    assert [e["data"]["i"] for e in model[1:]] == [1199, 700, 3, 0]
    assert [e["data"]["i"] for e in answers["?type=model.promoted"][1]["events"]] == [1199, 3]
    assert len(answers["?n=1000"][1]["events"]) == 1000


def test_events_answer_503_with_the_reason_while_redis_is_down(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, Any]:
        async with served(f"redis://127.0.0.1:{free_port()}/0", tmp_path) as (http, base):
            return await get(http, f"{base}/api/events")

    status, body = asyncio.run(scenario())
    assert status == 503 and body["error"].startswith("redis unavailable")


# -- /api/equity ------------------------------------------------------------------


def synthetic_version(data_dir: Path, at: datetime, returns: np.ndarray) -> str:
    """A version of MODEL whose returns.csv holds ``returns`` (strategy, buy-and-hold)."""

    def files(folder: Path) -> list[Path]:
        (folder / "evo.json").write_text("{}")
        ts = 1_704_067_200_000 + np.arange(len(returns)) * 3_600_000
        rows = [f"{t},{s!r},{b!r}" for t, (s, b) in zip(ts.tolist(), returns.tolist(), strict=True)]
        (folder / RETURNS_FILE).write_text("ts,strategy,buy_and_hold\n" + "\n".join(rows) + "\n")
        return [folder / "evo.json", folder / RETURNS_FILE]

    meta = {"family": "evo_model", "symbol": "TESTUSDT", "tf": "1h", "metrics": {"sharpe": 1.5}}
    return artifacts.write_version(data_dir, MODEL, files, meta, at).version


def stored_returns(folder: Path) -> np.ndarray:
    return np.loadtxt(folder / RETURNS_FILE, delimiter=",", skiprows=1, ndmin=2)


def verdict(promote: bool) -> Verdict:
    return Verdict(stage="candidate", gates=(), promote=promote, reason="test")


def test_equity_compounds_the_stored_returns_of_active_and_candidate(tmp_path: Path) -> None:
    # The active version comes from the real training pipeline, which keeps its
    # test-window returns in the version folder, checksummed with the artifact.
    trained = train_offline(
        OfflineSpec(
            family="evo_model",
            bars=make_bars(800, seed=1),
            data_dir=tmp_path,
            evaluation=EvaluationConfig(horizon=6, n_test_windows=2),
            now=datetime(2024, 5, 1, tzinfo=UTC),
        )
    )
    stored = artifacts.load_version(trained.artifact_dir)  # sha256 of every file checks out
    assert RETURNS_FILE in stored.metadata["artifacts"]
    rng = np.random.default_rng(4)
    candidate = synthetic_version(
        tmp_path, datetime(2024, 5, 2, tzinfo=UTC), rng.normal(0, 0.01, (1234, 2))
    )
    registry = Registry(tmp_path)
    for version, promote in ((trained.version, True), (candidate, False)):
        registry.register(MODEL, version)
        registry.apply_verdict(MODEL, version, verdict(promote))

    async def scenario() -> dict[str, tuple[int, Any]]:
        async with served("redis://127.0.0.1:1/0", tmp_path) as (http, base):
            return {
                q: await get(http, f"{base}/api/equity{q}")
                for q in (f"?model_id={MODEL}", "?model_id=xgb_NOPE_1h", "?model_id=..", "")
            }

    answers = asyncio.run(scenario())
    status, body = answers[f"?model_id={MODEL}"]
    assert status == 200 and body["symbol"] == "TESTUSDT"
    active, challenger = body["curves"]
    assert (active["role"], active["version"]) == ("active", trained.version)
    assert (challenger["role"], challenger["version"]) == ("candidate", candidate)

    full = stored_returns(trained.artifact_dir)
    assert active["bars"] == len(full) == trained.metrics["n_test_bars"] <= EQUITY_POINTS
    assert active["ts"] == full[:, 0].astype(np.int64).tolist()
    np.testing.assert_allclose(active["strategy"], np.cumprod(1 + full[:, 1]), rtol=1e-12)
    np.testing.assert_allclose(active["buy_and_hold"], np.cumprod(1 + full[:, 2]), rtol=1e-12)
    assert active["strategy"][-1] == pytest.approx(1 + trained.metrics["total_return"])

    full = stored_returns(registry.version_path(MODEL, candidate))
    assert challenger["bars"] == 1234 and len(challenger["ts"]) <= EQUITY_POINTS
    picked = np.searchsorted(full[:, 0], challenger["ts"])
    assert picked[0] == 0 and picked[-1] == 1233  # the first and the last point are kept
    np.testing.assert_allclose(challenger["strategy"], np.cumprod(1 + full[:, 1])[picked])
    np.testing.assert_allclose(challenger["buy_and_hold"], np.cumprod(1 + full[:, 2])[picked])

    status, body = answers["?model_id=xgb_NOPE_1h"]
    assert status == 404 and "model" in body["error"]
    status, body = answers["?model_id=.."]  # not a model id at all: refused before any path
    assert status == 400 and "model id" in body["error"]
    assert answers[""][0] == 400


def test_the_challenger_is_the_newest_candidate_else_the_newest_rejected() -> None:
    def entries(*stages: str) -> list[dict[str, Any]]:
        return [{"version": f"v{i}", "stage": s} for i, s in enumerate(stages)]

    def roles(*stages: str) -> list[tuple[str, str]]:
        return [(role, e["version"]) for role, e in compared_versions(entries(*stages))]

    assert roles("retired", "active", "candidate", "rejected", "candidate") == [
        ("active", "v1"),
        ("candidate", "v4"),
    ]
    assert roles("active", "rejected", "rejected", "retired") == [
        ("active", "v0"),
        ("rejected", "v2"),
    ]
    assert roles("rejected", "candidate") == [("candidate", "v1")]
    assert roles("trained") == []


# -- the page ---------------------------------------------------------------------


def test_the_page_is_html_and_polls_every_json_route(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[int, str, str]]:
        async with served("redis://127.0.0.1:1/0", tmp_path) as (http, base):
            pages = []
            for path in ("/", "/dashboard"):
                async with http.get(base + path) as resp:
                    pages.append((resp.status, resp.content_type, await resp.text()))
            return pages

    for status, content_type, html in asyncio.run(scenario()):
        assert status == 200 and content_type == "text/html"
        for route in ROUTES_POLLED:
            assert f'"{route}"' in html, route
        assert "http://" not in html and "https://" not in html  # no external assets


FLAT_SIGNAL = {
    "symbol": "TESTUSDT",
    "tf": "1h",
    "ts": 1_704_070_800_000,
    "mu": 0.0,
    "p_up": 0.5,
    "position": 0.0,
    "position_source": "flat",
    "plain_position": 0.0,
    "contributions": [],
    "versions": {},
    "latency_ms": 1.0,
    "status": "flat",
    "reason": "no active model: the record rule has not passed; in shadow: xgb",
    "shadow": {"mu": 0.001, "p_up": 0.61, "plain_position": 1.0, "versions": {"xgb": "v1"}},
}


def canned_routes() -> list[web.RouteDef]:
    """What the lifecycle and inference services answer, in their JSON shapes."""
    metrics = {"sharpe": 1.2, "dsr": 0.91, "trades": 42, "total_return": 0.1}
    version = {"version": "v20240501_000000", "stage": "active", "metrics": metrics}
    answers = {
        "/api/models": {
            "models": [
                {
                    "model_id": MODEL,
                    "family": "evo_model",
                    "symbol": "TESTUSDT",
                    "tf": "1h",
                    "active": version["version"],
                    "trials": {"trained": 17, "total": 17},
                    "versions": [version],
                }
            ]
        },
        "/api/jobs": {
            "backend": {"backend": "local", "lanes": {}},
            "queued": [],
            "running": [],
            "recent": [],
            "totals": {"done": 1},
        },
        "/api/trust": {
            "weights": {"xgb": 0.6, "evo_model": 0.4},
            "live_families": ["xgb"],
            "history": {
                "xgb": [[1_704_067_200_000, 0.5], [1_704_070_800_000, 0.6]],
                "evo_model": [[1_704_067_200_000, 0.5], [1_704_070_800_000, 0.4]],
            },
        },
        "/api/signals": {
            "n": 1,
            "signals": {
                "TESTUSDT:1h": {"latest": FLAT_SIGNAL, "recent": [FLAT_SIGNAL]},
                "OTHERUSDT:1h": {"latest": None, "recent": []},
            },
        },
    }

    def route(path: str, body: Any) -> web.RouteDef:
        async def handle(_: web.Request) -> web.StreamResponse:
            return json_response(body)

        return web.get(path, handle)

    return [route(path, body) for path, body in answers.items()]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_the_page_renders_in_headless_chromium_without_script_errors(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    publish(redis_client, ["model.evaluated"])
    synthetic_version(tmp_path, datetime(2024, 5, 1, tzinfo=UTC), np.full((50, 2), 0.001))
    assert CHROMIUM is not None

    async def scenario() -> tuple[str, str]:
        async with served(redis_url, tmp_path, canned_routes()) as (_, base):
            with tempfile.TemporaryDirectory() as profile:
                proc = await asyncio.create_subprocess_exec(
                    CHROMIUM,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={profile}",
                    "--enable-logging=stderr",
                    "--virtual-time-budget=4000",
                    "--dump-dom",
                    f"{base}/dashboard",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await asyncio.wait_for(proc.communicate(), 60)
        return out.decode(), err.decode()

    dom, log = asyncio.run(scenario())
    errors = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, "\n".join(errors)
    assert "updated " in dom  # the poll ran to its end
    assert f'data-model="{MODEL}"' in dom and "0.910" in dom  # the models table
    assert "model.evaluated" in dom  # the events table
    assert "<path d=" in dom  # trust and equity lines drawn
    # why nothing trades: the flat signal's status, reason and shadow pool; the trials
    assert "the record rule has not passed" in dom and "shadow p_up 0.610" in dom
    assert ">17<" in dom
