"""The bar store: one row per (symbol, tf, ts); a re-delivered bar is a no-op,
a differing one a conflict that keeps the stored bar; reads give training
arrays; stats count gaps."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from quantum_daemon.domain.bars import Bars
from quantum_daemon.storage.bar_store import Bar, BarStore, Outcome, SeriesStats
from tests.conftest import make_bars

HOUR = 3_600_000


def bar_list(bars: Bars) -> list[Bar]:
    return [
        Bar(bars.symbol, bars.tf, int(t), float(o), float(h), float(lo), float(c), float(v))
        for t, o, h, lo, c, v in zip(
            bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, strict=True
        )
    ]


@pytest.fixture
def store(tmp_path: Path):
    with BarStore.in_dir(tmp_path) as store:
        yield store


def test_new_bars_are_inserted_and_read_back_as_arrays(store: BarStore) -> None:
    source = make_bars(50, symbol="BTCUSDT")
    result = store.insert_bars(bar_list(source))
    assert (result.inserted, result.duplicates, result.conflicts) == (50, 0, ())
    assert result.outcomes == [Outcome.INSERTED] * 50
    read = store.read_bars("BTCUSDT", "1h")
    assert len(read) == 50
    assert read.ts.dtype == np.int64
    for column in ("ts", "open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(read, column), getattr(source, column))


def test_a_redelivered_bar_is_a_duplicate_and_a_differing_one_a_conflict(store: BarStore) -> None:
    bars = bar_list(make_bars(10, symbol="BTCUSDT"))
    store.insert_bars(bars[:5])
    changed = bars[3]._replace(close=bars[3].close + 1.0)
    batch = [bars[2], changed, *bars[5:]]
    result = store.insert_bars(batch)
    assert result.outcomes == [Outcome.DUPLICATE, Outcome.CONFLICT] + [Outcome.INSERTED] * 5
    assert (result.inserted, result.duplicates) == (5, 1)
    (conflict,) = result.conflicts
    assert (conflict.index, conflict.bar, conflict.stored) == (1, changed, bars[3])
    assert list(result.inserted_bars(batch)) == bars[5:]
    assert store.read_bars("BTCUSDT", "1h").close[3] == bars[3].close
    assert store.count() == 10


def test_one_key_twice_in_a_batch(store: BarStore) -> None:
    bar = bar_list(make_bars(1))[0]
    other = bar._replace(volume=bar.volume + 1)
    result = store.insert_bars([bar, bar, other])
    assert result.outcomes == [Outcome.INSERTED, Outcome.DUPLICATE, Outcome.CONFLICT]
    assert store.count() == 1


def test_reads_by_range_and_last_n(store: BarStore) -> None:
    source = make_bars(100, symbol="ETHUSDT")
    store.insert_bars(bar_list(source))
    t = source.ts
    assert store.read_bars("ETHUSDT", "1h", last_n=7).ts.tolist() == t[-7:].tolist()
    ranged = store.read_bars("ETHUSDT", "1h", start_ms=int(t[10]), end_ms=int(t[20]))
    assert ranged.ts.tolist() == t[10:20].tolist()
    both = store.read_bars("ETHUSDT", "1h", start_ms=int(t[10]), end_ms=int(t[20]), last_n=3)
    assert both.ts.tolist() == t[17:20].tolist()
    frame = store.read_frame("ETHUSDT", "1h", last_n=2)
    assert list(frame.columns) == ["ts", "open", "high", "low", "close", "volume"]
    assert frame["close"].tolist() == source.close[-2:].tolist()
    assert len(store.read_bars("NOPE", "1h")) == 0


def test_stats_count_missing_bars_per_series(store: BarStore) -> None:
    btc = bar_list(make_bars(20, symbol="BTCUSDT"))
    eth = bar_list(make_bars(10, symbol="ETHUSDT", tf="5m"))
    store.insert_bars([*btc[:5], *btc[8:15], *eth])
    store.insert_bars(btc[18:])
    assert store.stats() == [
        SeriesStats("BTCUSDT", "1h", 14, btc[0].ts, btc[-1].ts, 6),
        SeriesStats("ETHUSDT", "5m", 10, eth[0].ts, eth[-1].ts, 0),
    ]
    assert store.last_ts() == {("BTCUSDT", "1h"): btc[-1].ts, ("ETHUSDT", "5m"): eth[-1].ts}
    store.insert_bars(btc)  # filling the gaps
    assert store.stats()[0].missing == 0
    assert store.count("BTCUSDT", "1h") == 20


def test_the_store_is_durable_and_in_wal_mode(tmp_path: Path) -> None:
    bars = bar_list(make_bars(30))
    with BarStore.in_dir(tmp_path) as store:
        store.insert_bars(bars)
    with sqlite3.connect(tmp_path / "bars.sqlite3") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM bars").fetchone()[0] == 30
    with BarStore.in_dir(tmp_path, synchronous="FULL") as store:
        assert store.insert_bars(bars).duplicates == 30
        assert store.stats()[0].count == 30


def test_a_failed_batch_leaves_nothing_behind(store: BarStore) -> None:
    good = bar_list(make_bars(3))
    bad = good[2]._replace(close=object())  # cannot be bound: the whole batch rolls back
    with pytest.raises(sqlite3.ProgrammingError):
        store.insert_bars([good[0], good[1], bad])  # type: ignore[list-item]
    assert store.count() == 0
    assert len(store.read_bars("TESTUSDT", "1h")) == 0
    assert store.insert_bars(good).inserted == 3


def test_readers_in_other_threads_see_committed_bars(store: BarStore) -> None:
    store.insert_bars(bar_list(make_bars(40)))
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.append(len(store.read_bars("TESTUSDT", "1h"))))
    reader.start()
    reader.join()
    assert seen == [40]
