"""The bar store: the durable bar history that ingest writes and training reads.

One SQLite file (``bars.sqlite3`` in ``storage.data_dir``) in WAL mode:

- ``bars`` holds one row per (symbol, tf, ts), ``WITHOUT ROWID`` so the rows
  are clustered on that key (a range read of one series is one index scan).
- ``series`` holds a summary per (symbol, tf) (count, first and last ts),
  updated in the same transaction as the bars, so ``stats`` and gap detection
  never scan the whole history.

Durability: a batch is acknowledged on Redis only after ``insert_bars``
returns, i.e. after its transaction committed. With ``synchronous=NORMAL``
(the default) in WAL mode a committed transaction survives a crash of the
process (the WAL pages are in the OS page cache) but not a power loss or
kernel crash (the WAL is fsynced only at checkpoints). ``synchronous=FULL``
fsyncs the WAL on every commit and survives power loss too, at the price of
one fsync per batch.

Threads: every thread gets its own connection (WAL readers do not block the
writer). There must be one writing thread per file; the ingest consumer
writes from a dedicated single-thread executor.

Write faults (a full or read-only disk, an I/O error): a failed
``insert_bars`` committed nothing and raises; ``write_fault`` then says which
file and why (the daemon is not ready meanwhile, ingest retries the batch and
acknowledges nothing), until a write succeeds again. Opening an existing
store writes nothing, so a reader (the inference worker) starts on a full disk.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.timeframes import TIMEFRAME_MS
from quantum_daemon.runtime.logs import get_logger

log = get_logger()

DB_FILENAME = "bars.sqlite3"
SCHEMA_VERSION = 1
Synchronous = Literal["NORMAL", "FULL"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol TEXT NOT NULL,
    tf TEXT NOT NULL,
    ts INTEGER NOT NULL,
    open REAL NOT NULL,
    high REAL NOT NULL,
    low REAL NOT NULL,
    close REAL NOT NULL,
    volume REAL NOT NULL,
    PRIMARY KEY (symbol, tf, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    symbol TEXT NOT NULL,
    tf TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    PRIMARY KEY (symbol, tf)
) WITHOUT ROWID;
"""
_INSERT = "INSERT OR IGNORE INTO bars VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_UPSERT_SERIES = """
INSERT INTO series VALUES (?, ?, ?, ?, ?)
ON CONFLICT (symbol, tf) DO UPDATE SET
    count = count + excluded.count,
    first_ts = min(first_ts, excluded.first_ts),
    last_ts = max(last_ts, excluded.last_ts)
"""
_VALUE_COLUMNS = "ts, open, high, low, close, volume"
_SERIES = itemgetter(0, 1)  # (symbol, tf) of a Bar
_LOOKUP_CHUNK = 500  # host parameters per IN (...) lookup, well under SQLite's limit


class Bar(NamedTuple):
    """One bar. A named tuple rather than a dataclass because it is passed
    straight to ``executemany`` as the row's parameters (hot path)."""

    symbol: str
    tf: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    @property
    def key(self) -> tuple[str, str, int]:
        return self.symbol, self.tf, self.ts

    def values(self) -> dict[str, float | int]:
        """The stored values, as put in DLQ entries and logs."""
        return {
            "ts": self.ts,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volume": self.volume,
        }


class Outcome(StrEnum):
    INSERTED = "inserted"
    DUPLICATE = "duplicate"  # identical to the stored bar: a no-op
    CONFLICT = "conflict"  # differs from the stored bar: the stored one is kept


@dataclass(frozen=True)
class Conflict:
    """Bar ``index`` of the batch differs from the ``stored`` bar of its key."""

    index: int
    bar: Bar
    stored: Bar


@dataclass(frozen=True)
class InsertResult:
    """What one ``insert_bars`` call did, per bar of the batch."""

    size: int
    inserted_indices: tuple[int, ...] | None = None  # None: every bar was inserted
    duplicates: int = 0
    conflicts: tuple[Conflict, ...] = ()

    @property
    def inserted(self) -> int:
        return self.size if self.inserted_indices is None else len(self.inserted_indices)

    def inserted_bars(self, bars: Sequence[Bar]) -> Sequence[Bar]:
        """The bars of ``bars`` (the batch given) that were stored by this call."""
        if self.inserted_indices is None:
            return bars
        return [bars[i] for i in self.inserted_indices]

    @property
    def outcomes(self) -> list[Outcome]:
        """One outcome per bar of the batch, in order."""
        if self.inserted_indices is None:
            return [Outcome.INSERTED] * self.size
        result = [Outcome.DUPLICATE] * self.size
        for i in self.inserted_indices:
            result[i] = Outcome.INSERTED
        for conflict in self.conflicts:
            result[conflict.index] = Outcome.CONFLICT
        return result


@dataclass(frozen=True)
class SeriesStats:
    """Summary of one stored series; ``missing`` counts bars absent between
    the first and the last (the total size of its gaps)."""

    symbol: str
    tf: str
    count: int
    first_ts: int
    last_ts: int
    missing: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BarStore:
    """The SQLite bar store. Open with ``BarStore(path)`` or
    ``BarStore.in_dir(data_dir)``; close with ``close()`` (or use ``with``)."""

    def __init__(self, path: str | Path, synchronous: Synchronous = "NORMAL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.write_fault: str | None = None  # why the last write failed; None once one succeeds
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        version = self._connection().execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        with self._transaction() as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    @classmethod
    def in_dir(cls, data_dir: str | Path, synchronous: Synchronous = "NORMAL") -> BarStore:
        return cls(Path(data_dir) / DB_FILENAME, synchronous)

    def __enter__(self) -> BarStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- writing -------------------------------------------------------------

    def insert_bars(self, bars: Sequence[Bar]) -> InsertResult:
        """Store new bars in one transaction; identical bars already stored
        are duplicates (no-ops), differing ones conflicts (the stored bar is
        kept). Returns after the commit; on a write fault (see the module
        docstring) nothing is stored and ``sqlite3.OperationalError`` is raised."""
        if not bars:
            return InsertResult(size=0)
        try:
            result = self._insert(bars)
        except sqlite3.OperationalError as exc:
            self._write_failed(exc)
            raise
        if self.write_fault is not None:
            log.info("store.write_recovered", path=str(self.path), after=self.write_fault)
            self.write_fault = None
        return result

    def _write_failed(self, exc: sqlite3.OperationalError) -> None:
        fault = f"{self.path}: {exc} ({exc.sqlite_errorname}){_free_space(self.path.parent)}"
        if fault != self.write_fault:
            log.error("store.write_failed", path=str(self.path), error=fault)
        self.write_fault = fault

    def _insert(self, bars: Sequence[Bar]) -> InsertResult:
        with self._transaction() as conn:
            conn.execute("SAVEPOINT optimistic")
            if conn.executemany(_INSERT, bars).rowcount == len(bars):
                conn.execute("RELEASE optimistic")
                self._update_series(conn, bars)
                return InsertResult(size=len(bars))
            # Some keys existed already (a re-delivery, a conflict, or one key
            # twice in the batch): undo and classify bar by bar.
            conn.execute("ROLLBACK TO optimistic")
            conn.execute("RELEASE optimistic")
            return self._insert_classified(conn, bars)

    def _insert_classified(self, conn: sqlite3.Connection, bars: Sequence[Bar]) -> InsertResult:
        known = self._lookup(conn, bars)
        new_indices: list[int] = []
        conflicts: list[Conflict] = []
        duplicates = 0
        for i, bar in enumerate(bars):
            stored = known.get(bar.key)
            if stored is None:
                known[bar.key] = bar
                new_indices.append(i)
            elif stored == bar:
                duplicates += 1
            else:
                conflicts.append(Conflict(i, bar, stored))
        new_bars = [bars[i] for i in new_indices]
        conn.executemany(_INSERT, new_bars)
        self._update_series(conn, new_bars)
        return InsertResult(len(bars), tuple(new_indices), duplicates, tuple(conflicts))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        if conn.in_transaction:  # left open by a failure we could not roll back
            conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (busy, I/O error) leaves the transaction open:
            # roll it back so that the batch can be retried whole.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _lookup(self, conn: sqlite3.Connection, bars: Sequence[Bar]) -> dict[tuple, Bar]:
        """The stored bars that share a key with ``bars``."""
        found: dict[tuple, Bar] = {}
        for (symbol, tf), stamps in _group_ts(bars).items():
            for chunk in _chunks(sorted(set(stamps)), _LOOKUP_CHUNK):
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT {_VALUE_COLUMNS} FROM bars WHERE symbol = ? AND tf = ? "
                    f"AND ts IN ({marks})",
                    (symbol, tf, *chunk),
                )
                for row in rows:
                    found[(symbol, tf, row[0])] = Bar(symbol, tf, *row)
        return found

    def _update_series(self, conn: sqlite3.Connection, bars: Iterable[Bar]) -> None:
        rows = [
            (symbol, tf, len(stamps), min(stamps), max(stamps))
            for (symbol, tf), stamps in _group_ts(bars).items()
        ]
        conn.executemany(_UPSERT_SERIES, rows)

    # -- reading -------------------------------------------------------------

    def read_bars(
        self,
        symbol: str,
        tf: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        last_n: int | None = None,
    ) -> Bars:
        """Bars of one series with ``start_ms <= ts < end_ms`` (either bound
        optional), the last ``last_n`` of them if given, oldest first."""
        rows = self._select(symbol, tf, start_ms, end_ms, last_n)
        table = np.array(rows, dtype=np.float64).reshape(-1, 6)
        return Bars(
            symbol,
            tf,
            table[:, 0].astype(np.int64),
            table[:, 1].copy(),
            table[:, 2].copy(),
            table[:, 3].copy(),
            table[:, 4].copy(),
            table[:, 5].copy(),
        )

    def read_frame(
        self,
        symbol: str,
        tf: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        last_n: int | None = None,
    ) -> pd.DataFrame:
        """Like ``read_bars``, as a frame with columns ts, open, high, low, close, volume."""
        return self.read_bars(symbol, tf, start_ms, end_ms, last_n).to_frame()

    def _select(
        self, symbol: str, tf: str, start_ms: int | None, end_ms: int | None, last_n: int | None
    ) -> list[tuple]:
        where = ["symbol = ?", "tf = ?"]
        params: list[Any] = [symbol, tf]
        if start_ms is not None:
            where.append("ts >= ?")
            params.append(start_ms)
        if end_ms is not None:
            where.append("ts < ?")
            params.append(end_ms)
        sql = f"SELECT {_VALUE_COLUMNS} FROM bars WHERE {' AND '.join(where)}"
        if last_n is None:
            return self._connection().execute(sql + " ORDER BY ts", params).fetchall()
        rows = self._connection().execute(sql + " ORDER BY ts DESC LIMIT ?", [*params, last_n])
        return rows.fetchall()[::-1]

    def stats(self) -> list[SeriesStats]:
        """Count, first and last ts and missing bars of every stored series."""
        rows = self._connection().execute(
            "SELECT symbol, tf, count, first_ts, last_ts FROM series ORDER BY symbol, tf"
        )
        return [
            SeriesStats(symbol, tf, count, first, last, _missing(tf, count, first, last))
            for symbol, tf, count, first, last in rows
        ]

    def last_ts(self) -> dict[tuple[str, str], int]:
        """Open time of the newest stored bar of every series."""
        rows = self._connection().execute("SELECT symbol, tf, last_ts FROM series")
        return {(symbol, tf): last for symbol, tf, last in rows}

    def count(self, symbol: str | None = None, tf: str | None = None) -> int:
        """Number of stored bars, of one series or of all."""
        if symbol is None or tf is None:
            row = self._connection().execute("SELECT COALESCE(SUM(count), 0) FROM series")
        else:
            row = self._connection().execute(
                "SELECT COALESCE(SUM(count), 0) FROM series WHERE symbol = ? AND tf = ?",
                (symbol, tf),
            )
        return int(row.fetchone()[0])

    # -- connections ---------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=30.0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        with self._lock:
            self._connections.append(conn)
        return conn


def _free_space(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return ""
    return f"; {free / 2**20:.1f} MiB free in {directory}"


def _group_ts(bars: Iterable[Bar]) -> dict[tuple[str, str], list[int]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for key, run in groupby(bars, key=_SERIES):
        groups.setdefault(key, []).extend([bar[2] for bar in run])
    return groups


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _missing(tf: str, count: int, first_ts: int, last_ts: int) -> int:
    step = TIMEFRAME_MS.get(tf)
    if step is None:
        return 0
    return max(0, (last_ts - first_ts) // step + 1 - count)
