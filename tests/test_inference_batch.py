"""Series whose bars were stored together go to the worker in one batch: a
real worker process answers them all, each series gets its own signals, a
catch-up series does not swell a batch, and a lost batch leaves every one of
its series waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis

from quantum_daemon.core.ensemble import parse_signal
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.keys import Keys
from quantum_daemon.inference import InferenceService
from quantum_daemon.storage.bar_store import BarStore
from tests.inference_helpers import bar_at, inference, make_config
from tests.planted_family import install_version, planted_market

SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
HISTORY = 200
KEYS = Keys()


def markets() -> dict[str, Bars]:
    return {s: planted_market(HISTORY + 10, horizon=2, seed=k, symbol=s) for k, s in
            enumerate(SYMBOLS)}  # fmt: skip


def install(data_dir: Path) -> None:
    for symbol in SYMBOLS:
        install_version(data_dir, "xgb", {"seed": 1}, symbol=symbol)


def store(
    service: InferenceService, bar_store: BarStore, bars: Bars, start: int, stop: int
) -> None:
    bar_store.insert_bars([bar_at(bars, t) for t in range(start, stop)])
    service.bars_stored(bars.symbol, bars.tf, stop - start)


def signal_ts(client: redis.Redis, symbol: str) -> list[int]:
    return [parse_signal(f).ts for _, f in client.xrange(KEYS.signals(symbol, "1h"))]


def test_series_stored_together_are_answered_in_one_batch(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    cfg = make_config(redis_url, tmp_path / "data")
    install(cfg.storage.data_dir)
    bars = markets()

    async def scenario() -> tuple[int, int, int]:
        async with inference(cfg, families=("xgb",)) as (service, bar_store):
            for symbol in SYMBOLS:
                store(service, bar_store, bars[symbol], 0, HISTORY)
            await service.run_until_idle()
            requests_before = service.state.totals.requests
            for symbol in SYMBOLS:  # the next bar closes on every series
                store(service, bar_store, bars[symbol], HISTORY, HISTORY + 1)
            await service.serve_next()  # once
            waiting = len(service.server.waiting)
            await service.run_until_idle()
            return waiting, service.state.totals.requests - requests_before, len(SYMBOLS)

    waiting, requests, series = asyncio.run(scenario())
    assert waiting == 0  # the one call served every series
    assert requests == series  # one request per series, in one batch
    for symbol in SYMBOLS:
        ts = signal_ts(redis_client, symbol)
        assert ts[-1] == int(bars[symbol].ts[HISTORY])  # its own newest bar
        assert len(ts) == len(set(ts))  # none twice


def test_a_catch_up_series_is_not_batched_past_the_bar_bound(
    tmp_path: Path, redis_url: str
) -> None:
    cfg = make_config(redis_url, tmp_path / "data")

    async def scenario() -> list[list[str]]:
        async with inference(cfg, families=()) as (service, _):
            server = service.server
            limit = cfg.inference.batch_bars
            server.bars_stored("AAAUSDT", "1h", limit + 5)  # a long catch-up first
            server.bars_stored("BBBUSDT", "1h", 1)
            server.bars_stored("CCCUSDT", "1h", limit - 1)
            server.bars_stored("DDDUSDT", "1h", 1)
            batches = []
            while server.waiting:
                batches.append([series[0] for series, _, _ in server.next_batch()])
            return batches

    assert asyncio.run(scenario()) == [["AAAUSDT"], ["BBBUSDT", "CCCUSDT"], ["DDDUSDT"]]


def test_a_lost_batch_leaves_each_series_waiting_with_its_bars(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    cfg = make_config(redis_url, tmp_path / "data")
    install(cfg.storage.data_dir)
    bars = markets()

    async def scenario() -> dict[tuple[str, str], int]:
        async with inference(cfg, families=("xgb",)) as (service, bar_store):
            await service.run_until_idle()  # the worker is up
            for symbol in SYMBOLS:
                store(service, bar_store, bars[symbol], 0, HISTORY)
            service.link.kill()
            await asyncio.wait_for(service.link.died.wait(), timeout=10)
            await service.serve_next()
            return dict(service.server.waiting_bars)

    waiting = asyncio.run(scenario())
    assert waiting == {(s, "1h"): HISTORY for s in SYMBOLS}
    assert all(signal_ts(redis_client, s) == [] for s in SYMBOLS)
