"""Forecast intervals live: real families answer q05 / q50 / q95 through a
real inference worker, the signal on the stream carries their pool, the
prediction records score them when the horizon matures (old files migrate on
open), and ``models show`` lists each version's live coverage."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from quantum_daemon.core.conformal import pinball_loss
from quantum_daemon.core.ensemble import (
    MemberForecast,
    build_signal,
    combine,
    parse_signal,
    signal_fields,
)
from quantum_daemon.core.promotion import Verdict
from quantum_daemon.domain.config import ApiConfig, Config, EvaluationConfig, InferenceConfig
from quantum_daemon.domain.keys import Keys
from quantum_daemon.lifecycle.service import LifecycleService
from quantum_daemon.lifecycle.views import models_view, with_live_intervals
from quantum_daemon.models.families import load_model
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.prediction_records import (
    RECORDS_FILE,
    DuePrediction,
    PredictionRecords,
    PredictionRow,
    Settled,
    read_interval_scores,
)
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.offline import OfflineSpec, train_offline
from quantum_daemon.web.api import ApiServer
from tests.cli_helpers import run_cli
from tests.conftest import make_bars
from tests.inference_helpers import Feeder, inference, make_config

KEYS = Keys()
SYMBOL, TF, HORIZON = "TESTUSDT", "1h", 4


def test_signals_carry_the_pooled_intervals_and_live_scoring_fills_coverage(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    bars = make_bars(760, seed=21, symbol=SYMBOL)
    registry = Registry(tmp_path)
    for family, params in (("xgb", {"num_boost_round": 30}), ("lgbm", {})):
        trained = train_offline(
            OfflineSpec(
                family=family,
                bars=bars.slice(0, 700),
                data_dir=tmp_path,
                evaluation=EvaluationConfig(horizon=HORIZON, n_test_windows=1),
                params=params,
            )
        )
        registry.register(trained.model_id, trained.version)
        promoted = Verdict("candidate", (), True, "")
        registry.apply_verdict(trained.model_id, trained.version, promoted)
    cfg = make_config(redis_url, tmp_path, horizon=HORIZON)

    async def scenario() -> None:
        async with inference(cfg, families=()) as (service, store):
            feeder = Feeder(service, store, bars)
            feeder.store_until(700)
            await service.run_until_idle()
            await feeder.feed(720)

    asyncio.run(scenario())
    signals = [parse_signal(f) for _, f in redis_client.xrange(KEYS.signals(SYMBOL, TF))]
    assert len(signals) == 21 and all(s.status == "live" for s in signals)
    raw = redis_client.xrevrange(KEYS.signals(SYMBOL, TF), count=1)[0][1]
    assert {"q05", "q50", "q95"} <= set(raw)
    for s in signals:
        assert s.q05 is not None and s.q50 is not None and s.q95 is not None
        assert s.q05 < s.q50 < s.q95
    last = signals[-1]
    context = InferenceConfig().context_bars
    window = bars.slice(720 - context - 1, 720)
    expected = np.zeros(3)
    for c in last.contributions:
        model, _ = load_model(registry.version_path(c.model, c.version))
        fc = model.predict(window, np.array([len(window) - 1]))
        expected += c.weight * np.array([fc.q05[0], fc.q50[0], fc.q95[0]])
    np.testing.assert_allclose([last.q05, last.q50, last.q95], expected, rtol=1e-9, atol=1e-12)

    records = PredictionRecords(tmp_path / RECORDS_FILE)
    rows = records.connection().execute(
        "SELECT ts, q05, q50, q95, pinball, covered FROM predictions "
        "WHERE status = 'scored' AND model_id = 'xgb_TESTUSDT_1h' ORDER BY ts"
    ).fetchall()
    assert len(rows) >= 10  # the bars whose horizon came within the feed
    where = {int(t): i for i, t in enumerate(bars.ts)}
    for ts, q05, q50, q95, pinball, covered in rows:
        i = where[ts]
        realized = float(np.log(bars.close[i + HORIZON] / bars.close[i]))
        reference = np.mean(
            [pinball_loss(np.array([realized]), np.array([q]), lv)[0]
             for q, lv in ((q05, 0.05), (q50, 0.5), (q95, 0.95))]
        )  # fmt: skip
        assert pinball == pytest.approx(reference)
        assert covered == int(q05 <= realized <= q95)
    scores = records.interval_scores()
    records.close()
    assert {m for m, _ in scores} == {"xgb_TESTUSDT_1h", "lgbm_TESTUSDT_1h"}

    (tmp_path / "config.toml").write_text(f'[storage]\ndata_dir = "{tmp_path}"\n')
    shown = run_cli(tmp_path, "models", "show", "xgb_TESTUSDT_1h")
    assert shown.returncode == 0, shown.stderr
    (version,) = json.loads(shown.stdout)["versions"]
    live = version["live_intervals"]
    assert live["n"] == len(rows)
    assert live["coverage_90"] == pytest.approx(np.mean([r[5] for r in rows]))
    assert 0.0 <= version["metrics"]["coverage_90"] <= 1.0 and version["metrics"]["pinball"] > 0
    # what /api/models serves: the registry's view and the records read at request time
    scores = read_interval_scores(tmp_path / RECORDS_FILE)
    served = with_live_intervals(models_view(registry), scores)
    (listed,) = {m["model_id"]: m for m in served}["xgb_TESTUSDT_1h"]["versions"]
    assert listed["metrics"]["coverage_90"] == version["metrics"]["coverage_90"]
    assert listed["live_intervals"] == live
    served_api = asyncio.run(api_models(cfg))  # and the real route says the same
    (over_http,) = {m["model_id"]: m for m in served_api}["xgb_TESTUSDT_1h"]["versions"]
    assert over_http["live_intervals"] == live
    assert over_http["metrics"]["coverage_90"] == version["metrics"]["coverage_90"]


class Source:
    def readiness(self) -> tuple[bool, str]:
        return True, "ok"

    def status(self) -> dict[str, Any]:
        return {}

    def metrics_text(self) -> bytes:
        return b""


async def api_models(cfg: Config) -> list[dict[str, Any]]:
    """``GET /api/models`` of a real lifecycle service on ``cfg``'s data dir."""
    cfg = replace(
        cfg,
        models=replace(cfg.models, families=("xgb", "lgbm"), symbols=(SYMBOL,)),
        training=replace(cfg.training, workers=1, gpu="off"),
    )
    client = aioredis.Redis.from_url(cfg.redis.url)
    store = BarStore.in_dir(cfg.storage.data_dir)
    try:
        async with LifecycleService(cfg, client, store, CollectorRegistry()) as service:
            async with ApiServer(ApiConfig(port=0), Source(), service.routes()) as api:
                async with aiohttp.ClientSession() as http:
                    answer = await http.get(f"http://127.0.0.1:{api.port}/api/models")
                    assert answer.status == 200
                    body: dict[str, Any] = await answer.json()
    finally:
        store.close()
        await client.aclose()
    return list(body["models"])


OLD_PREDICTIONS = """CREATE TABLE predictions (
    model_id TEXT NOT NULL, version TEXT NOT NULL, symbol TEXT NOT NULL,
    tf TEXT NOT NULL, ts INTEGER NOT NULL, family TEXT NOT NULL, stage TEXT NOT NULL,
    due_ts INTEGER NOT NULL, mu REAL NOT NULL, p_up REAL NOT NULL, position REAL,
    status TEXT NOT NULL DEFAULT 'pending', loss REAL,
    PRIMARY KEY (model_id, version, symbol, ts)
) WITHOUT ROWID"""


def test_a_records_file_from_before_intervals_gains_their_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / RECORDS_FILE
    old = sqlite3.connect(path)
    old.execute(OLD_PREDICTIONS)
    old.execute(
        "INSERT INTO predictions VALUES ('xgb_X_1h', 'v1', 'X', '1h', 0, 'xgb', 'active', "
        "7200000, 0.01, 0.6, NULL, 'scored', 0.2)"
    )
    old.commit()
    old.close()
    records = PredictionRecords(path)
    columns = {r[1] for r in records.connection().execute("PRAGMA table_info(predictions)")}
    assert {"q05", "q50", "q95", "pinball", "covered"} <= columns
    assert records.losses("xgb_X_1h", "v1") == {0: 0.2}  # the old row is intact
    assert records.interval_scores() == {}  # it had no intervals
    row = PredictionRow("xgb_X_1h", "v2", "X", "1h", 3600000, "xgb", "active", 10800000,
                        0.0, 0.5, None, (-0.02, 0.0, 0.02))  # fmt: skip
    records.record([row], [])
    (due,) = records.due("X", "1h", 3600000, 10800000)
    assert isinstance(due, DuePrediction) and due.quantiles == (-0.02, 0.0, 0.02)
    records.settle([Settled("xgb_X_1h", "v2", "X", 3600000, 0.25, None, 0.004, True)])
    score = records.interval_scores("xgb_X_1h")[("xgb_X_1h", "v2")]
    assert (score.n, score.coverage_90, score.pinball) == (1, 1.0, pytest.approx(0.004))
    records.close()
    PredictionRecords(path).connection()  # opening again: nothing left to add


def test_pooled_quantiles_round_trip_the_stream_fields_and_old_entries_have_none() -> None:
    members = [
        MemberForecast("xgb", "xgb_X_1h", "v1", 0.01, 0.6, (-0.02, 0.01, 0.04)),
        MemberForecast("lgbm", "lgbm_X_1h", "v1", 0.0, 0.5, (-0.04, 0.0, 0.02)),
        MemberForecast("nhits", "nhits_X_1h", "v1", 0.0, 0.5, None),  # no intervals: left out
    ]
    pooled = combine(members, {"xgb": 0.5, "lgbm": 0.25, "nhits": 0.25})
    assert pooled.quantiles == pytest.approx((-0.08 / 3, 0.02 / 3, 0.10 / 3))
    signal = build_signal("X", "1h", 0, pooled, None, 1.0)
    fields = signal_fields(signal)
    assert float(fields["q05"]) == pytest.approx(-0.08 / 3)
    assert parse_signal(fields) == signal
    older = {k: v for k, v in fields.items() if k not in ("q05", "q50", "q95")}
    assert parse_signal(older).q05 is None
    without = combine(members[2:], {})
    assert without.quantiles is None and "q05" not in signal_fields(
        build_signal("X", "1h", 0, without, None, 1.0)
    )
