"""Live predictions on disk until they are scored: ``predictions.sqlite3``.

One SQLite file (WAL) in ``storage.data_dir``, beside the bar store:

- ``predictions``: one row per (model, version, symbol, bar): the model's
  ``mu``, ``p_up`` and position at that bar's close, its stage then
  (``active`` or ``candidate``), ``due_ts`` (the open time of the bar whose
  close settles it: ``horizon`` bars later for a forecast, the next bar for
  a position), and once settled its ``loss`` (``status`` ``scored``) or
  ``void`` (the bar it needed never came); a forecast with intervals also
  keeps its ``q05``/``q50``/``q95`` and, once scored, their mean ``pinball``
  loss and whether ``[q05, q95]`` ``covered`` the outcome (``interval_scores``:
  live coverage per version, over the settled rows kept);
- ``decisions``: one row per published signal: the ensemble and the plain
  rule's position, which position families are scored against;
- ``model_record``: one row per (model, symbol, bar): the costed one-bar
  return of the position the model's newest live version took at that bar
  (``rounds.settle``), from live scoring or seeded by ``simulate
  --seed-live``. It is what the promotion's record rule reads
  (``promotion.record_gate``), pruned to ``[promotion] record_bars`` bars
  per model, not with the predictions.

A prediction row is written once (``INSERT OR IGNORE``): a bar predicted
again after a restart keeps what was said first. Scoring itself is keyed by
(model, version, symbol, bar) in Redis (``trust_store``), so a row whose
score was applied but not yet marked here (a crash in between) is
harmlessly applied again. Used from one thread (the service's I/O thread).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECORDS_FILE = "predictions.sqlite3"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
        model_id TEXT NOT NULL, version TEXT NOT NULL, symbol TEXT NOT NULL,
        tf TEXT NOT NULL, ts INTEGER NOT NULL, family TEXT NOT NULL, stage TEXT NOT NULL,
        due_ts INTEGER NOT NULL, mu REAL NOT NULL, p_up REAL NOT NULL, position REAL,
        status TEXT NOT NULL DEFAULT 'pending', loss REAL,
        q05 REAL, q50 REAL, q95 REAL, pinball REAL, covered INTEGER,
        PRIMARY KEY (model_id, version, symbol, ts)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS predictions_due
        ON predictions (symbol, tf, due_ts) WHERE status = 'pending'""",
    """CREATE TABLE IF NOT EXISTS decisions (
        symbol TEXT NOT NULL, tf TEXT NOT NULL, ts INTEGER NOT NULL,
        mu REAL NOT NULL, p_up REAL NOT NULL, position REAL NOT NULL,
        plain_position REAL NOT NULL, latency_ms REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'live',
        PRIMARY KEY (symbol, tf, ts)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS model_record (
        model_id TEXT NOT NULL, symbol TEXT NOT NULL, tf TEXT NOT NULL, ts INTEGER NOT NULL,
        version TEXT NOT NULL, stage TEXT NOT NULL, net REAL NOT NULL, source TEXT NOT NULL,
        PRIMARY KEY (model_id, symbol, ts)
    ) WITHOUT ROWID""",
)

# One row per model and bar: the newest version's return wins (a version
# name sorts by its training time), whoever settles first.
_RECORD = """
INSERT INTO model_record (model_id, symbol, tf, ts, version, stage, net, source)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (model_id, symbol, ts) DO UPDATE SET
    version = excluded.version, stage = excluded.stage, net = excluded.net,
    source = excluded.source
WHERE excluded.version > model_record.version
"""

_DUE = """
SELECT p.model_id, p.version, p.family, p.stage, p.ts, p.due_ts, p.mu, p.p_up, p.position,
       prev.position, d.plain_position, dprev.plain_position, prev.mu, prev.p_up,
       p.q05, p.q50, p.q95
FROM predictions p
LEFT JOIN predictions prev ON prev.model_id = p.model_id AND prev.version = p.version
     AND prev.symbol = p.symbol AND prev.ts = p.ts - :step
LEFT JOIN decisions d ON d.symbol = p.symbol AND d.tf = p.tf AND d.ts = p.ts
LEFT JOIN decisions dprev ON dprev.symbol = p.symbol AND dprev.tf = p.tf AND dprev.ts = p.ts - :step
WHERE p.symbol = :symbol AND p.tf = :tf AND p.status = 'pending' AND p.due_ts <= :upto
ORDER BY p.due_ts, p.model_id, p.version
"""


LIVE, SIMULATED = "live", "simulated"  # where a record row came from
NO_VIEW = "none"  # a decision's status: flat, and no candidate had a view either


@dataclass(frozen=True)
class RecordRow:
    """One bar of a model's out-of-sample record: the costed return of the
    position its version's forecast implied (``rounds.settle``)."""

    model_id: str
    symbol: str
    tf: str
    ts: int
    version: str
    stage: str
    net: float
    source: str = LIVE


@dataclass(frozen=True)
class PredictionRow:
    model_id: str
    version: str
    symbol: str
    tf: str
    ts: int
    family: str
    stage: str
    due_ts: int
    mu: float
    p_up: float
    position: float | None
    quantiles: tuple[float, float, float] | None = None  # q05, q50, q95


@dataclass(frozen=True)
class DecisionRow:
    symbol: str
    tf: str
    ts: int
    mu: float
    p_up: float
    position: float
    plain_position: float
    latency_ms: float
    # the signal's: live, killed, flat (nothing active; the shadow pool's view)
    # or none (flat, and no view at all)
    status: str = "live"


@dataclass(frozen=True)
class DuePrediction:
    """A pending prediction whose settling bar has come, with what scoring
    a position needs: the model's previous position and the plain rule's
    position at this bar and the one before (None where there was none)."""

    model_id: str
    version: str
    family: str
    stage: str
    symbol: str
    tf: str
    ts: int
    due_ts: int
    mu: float
    p_up: float
    position: float | None
    previous_position: float | None
    plain: float | None
    previous_plain: float | None
    previous_mu: float | None = None  # the version's forecast one bar before, if any
    previous_p_up: float | None = None
    quantiles: tuple[float, float, float] | None = None  # q05, q50, q95, if it had them


@dataclass(frozen=True)
class Settled:
    """What became of a due prediction: its loss, or None for void; and the
    costed one-bar return of the position it implied (the model's record),
    or None where the bar after it is missing."""

    model_id: str
    version: str
    symbol: str
    ts: int
    loss: float | None
    net: float | None = None
    pinball: float | None = None  # mean over q05 / q50 / q95, where it had intervals
    covered: bool | None = None  # the outcome inside [q05, q95]


@dataclass(frozen=True)
class IntervalScore:
    """A version's live interval record: scored forecasts with intervals,
    the share whose outcome ``[q05, q95]`` held, their mean pinball loss."""

    n: int
    coverage_90: float
    pinball: float


class PredictionRecords:
    """The SQLite file of live predictions; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = None

    def connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                conn.execute(statement)
            _add_missing_columns(conn)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def record(
        self, predictions: Sequence[PredictionRow], decisions: Sequence[DecisionRow]
    ) -> None:
        """Write one answer's predictions and signals in one transaction."""
        conn = self.connection()
        with _transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO predictions (model_id, version, symbol, tf, ts, family, "
                "stage, due_ts, mu, p_up, position, q05, q50, q95) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (p.model_id, p.version, p.symbol, p.tf, p.ts, p.family, p.stage,
                     p.due_ts, p.mu, p.p_up, p.position, *(p.quantiles or (None,) * 3))
                    for p in predictions
                ],
            )  # fmt: skip
            conn.executemany(
                "INSERT OR IGNORE INTO decisions (symbol, tf, ts, mu, p_up, position, "
                "plain_position, latency_ms, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (d.symbol, d.tf, d.ts, d.mu, d.p_up, d.position, d.plain_position,
                     d.latency_ms, d.status)
                    for d in decisions
                ],
            )  # fmt: skip

    def due(self, symbol: str, tf: str, step_ms: int, upto_ts: int) -> list[DuePrediction]:
        """Pending predictions of the series settled by bars up to ``upto_ts``."""
        rows = self.connection().execute(
            _DUE, {"symbol": symbol, "tf": tf, "step": step_ms, "upto": upto_ts}
        )
        return [
            DuePrediction(
                model_id, version, family, stage, symbol, tf, ts, due_ts, mu, p_up,
                position, prev, plain, prev_plain, prev_mu, prev_p_up,
                None if None in (q05, q50, q95) else (q05, q50, q95),
            )
            for (model_id, version, family, stage, ts, due_ts, mu, p_up, position, prev,
                 plain, prev_plain, prev_mu, prev_p_up, q05, q50, q95) in rows
        ]  # fmt: skip

    def settle(self, settled: Sequence[Settled], due: Sequence[DuePrediction] = ()) -> None:
        """Mark the predictions scored or void; with ``due`` (the same order
        as ``settled``), add their returns to their models' records."""
        conn = self.connection()
        with _transaction(conn):
            if due:
                conn.executemany(
                    _RECORD,
                    [
                        (p.model_id, p.symbol, p.tf, p.ts, p.version, p.stage, s.net, LIVE)
                        for p, s in zip(due, settled, strict=True)
                        if s.net is not None
                    ],
                )
            conn.executemany(
                "UPDATE predictions SET status = ?, loss = ?, pinball = ?, covered = ? "
                "WHERE model_id = ? AND version = ? AND symbol = ? AND ts = ?",
                [
                    ("void" if s.loss is None else "scored", s.loss, s.pinball,
                     None if s.covered is None else int(s.covered), s.model_id, s.version,
                     s.symbol, s.ts)
                    for s in settled
                ],
            )  # fmt: skip

    def interval_scores(self, model_id: str | None = None) -> dict[tuple[str, str], IntervalScore]:
        """(model_id, version) -> its live interval record (one model's, or all)."""
        rows = self.connection().execute(
            "SELECT model_id, version, COUNT(*), AVG(covered), AVG(pinball) FROM predictions "
            "WHERE status = 'scored' AND covered IS NOT NULL AND (? IS NULL OR model_id = ?) "
            "GROUP BY 1, 2",
            (model_id, model_id),
        )
        return {
            (str(m), str(v)): IntervalScore(int(n), float(cov), float(pin))
            for m, v, n, cov, pin in rows
        }

    def losses(self, model_id: str, version: str) -> dict[int, float]:
        """The version's scored losses by bar (the mean over symbols for a
        multi-symbol model): its live record for the shadow comparison."""
        rows = self.connection().execute(
            "SELECT ts, AVG(loss) FROM predictions WHERE model_id = ? AND version = ? "
            "AND status = 'scored' GROUP BY ts",
            (model_id, version),
        )
        return {int(ts): float(loss) for ts, loss in rows}

    def add_record(self, rows: Iterable[RecordRow]) -> int:
        """Seed models' records (``simulate --seed-live``); the newest version wins."""
        conn = self.connection()
        with _transaction(conn):
            before = conn.total_changes
            conn.executemany(
                _RECORD,
                [(r.model_id, r.symbol, r.tf, r.ts, r.version, r.stage, r.net, r.source)
                 for r in rows],
            )  # fmt: skip
            return conn.total_changes - before

    def record_returns(self, model_id: str, last: int) -> np.ndarray:
        """The model's record: its newest ``last`` bars' returns, oldest first
        (the mean over symbols for a multi-symbol model)."""
        rows = self.connection().execute(
            "SELECT net FROM (SELECT ts, AVG(net) AS net FROM model_record WHERE model_id = ? "
            "GROUP BY ts ORDER BY ts DESC LIMIT ?) ORDER BY ts",
            (model_id, last),
        )
        return np.array([net for (net,) in rows], dtype=np.float64)

    def record_counts(self) -> dict[str, int]:
        """Bars in each model's record."""
        rows = self.connection().execute(
            "SELECT model_id, COUNT(DISTINCT ts) FROM model_record GROUP BY 1"
        )
        return {str(model_id): int(n) for model_id, n in rows}

    def prune_records(self, keep_bars: int, step_ms: int) -> int:
        """Forget the record rows older than each model's newest ``keep_bars``
        bars (of ``step_ms``): the record is a window, not all of history."""
        conn = self.connection()
        with _transaction(conn):
            return int(
                conn.execute(
                    "DELETE FROM model_record WHERE ts < (SELECT MAX(r.ts) FROM model_record r "
                    "WHERE r.model_id = model_record.model_id) - ?",
                    (keep_bars * step_ms,),
                ).rowcount
            )

    def ensemble_forecasts(
        self, symbol: str, tf: str, after_ts: int, upto_ts: int
    ) -> list[tuple[int, float]]:
        """(ts, p_up) of the series' published signals with an active ensemble
        (live or killed, not flat) in (``after_ts``, ``upto_ts``]."""
        rows = self.connection().execute(
            "SELECT ts, p_up FROM decisions WHERE symbol = ? AND tf = ? AND ts > ? AND ts <= ? "
            "AND status IN ('live', 'killed') ORDER BY ts",
            (symbol, tf, after_ts, upto_ts),
        )
        return [(int(ts), float(p_up)) for ts, p_up in rows]

    def signal_history(self, symbol: str, tf: str) -> list[tuple[int, float, float]]:
        """(ts, mu, p_up) of every recorded signal of the series with a view
        (the ensemble's, or a flat signal's shadow pool), in ``ts`` order:
        what ``rl_sizer`` learns from beside the stream (seeded signals too)."""
        rows = self.connection().execute(
            "SELECT ts, mu, p_up FROM decisions WHERE symbol = ? AND tf = ? AND status != ? "
            "ORDER BY ts",
            (symbol, tf, NO_VIEW),
        )
        return [(int(ts), float(mu), float(p_up)) for ts, mu, p_up in rows]

    def last_decisions(self) -> dict[tuple[str, str], int]:
        """Open time of the newest signal of every series."""
        rows = self.connection().execute("SELECT symbol, tf, MAX(ts) FROM decisions GROUP BY 1, 2")
        return {(symbol, tf): int(ts) for symbol, tf, ts in rows}

    def counts(self) -> dict[str, int]:
        rows = self.connection().execute("SELECT status, COUNT(*) FROM predictions GROUP BY 1")
        return {str(status): int(n) for status, n in rows}

    def prune(self, before_ts: int) -> int:
        """Forget settled predictions and signals of bars before ``before_ts``."""
        conn = self.connection()
        with _transaction(conn):
            gone = conn.execute(
                "DELETE FROM predictions WHERE ts < ? AND status != 'pending'", (before_ts,)
            ).rowcount
            conn.execute("DELETE FROM decisions WHERE ts < ?", (before_ts,))
        return int(gone)


_ADDED_COLUMNS = (  # (table, column, its declaration): columns added after the first files
    ("decisions", "status", "TEXT NOT NULL DEFAULT 'live'"),
    ("predictions", "q05", "REAL"),
    ("predictions", "q50", "REAL"),
    ("predictions", "q95", "REAL"),
    ("predictions", "pinball", "REAL"),
    ("predictions", "covered", "INTEGER"),
)


def read_interval_scores(path: Path) -> dict[tuple[str, str], IntervalScore]:
    """``PredictionRecords.interval_scores`` of the file at ``path``, opened
    and closed here (a reader's: a missing file is no scores, never created)."""
    if not Path(path).exists():
        return {}
    records = PredictionRecords(path)
    try:
        return records.interval_scores()
    finally:
        records.close()


def live_intervals_json(
    scores: Mapping[tuple[str, str], IntervalScore], model_id: str, version: str
) -> dict[str, float | int] | None:
    """A version's ``live_intervals`` as JSON (None: nothing scored yet)."""
    found = scores.get((model_id, version))
    return None if found is None else dataclasses.asdict(found)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """A file written before a column existed gets it, with its default."""
    for table in {t for t, _, _ in _ADDED_COLUMNS}:
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for _, column, declaration in (c for c in _ADDED_COLUMNS if c[0] == table):
            if column not in columns:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
