"""Publish bar files onto the bar streams (``quantum-daemon replay``).

Each bar becomes one ``XADD`` with the contract's fields as decimal strings
(``repr`` of the float: the shortest text that parses back to the same
value, so a bar replayed twice is a duplicate, never a conflict). Commands
are packed by hiredis and written in chunks on one connection, their replies
read afterwards: a pipeline without redis-py's per-command bookkeeping.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import hiredis
import pandas as pd
import redis
from redis.exceptions import ResponseError

from quantum_daemon.domain.keys import Keys
from quantum_daemon.storage.bar_files import BarFile, read_bar_file

CHUNK = 1000  # commands per write: large enough to amortize the round trip


@dataclass(frozen=True)
class ReplayResult:
    bars: int
    streams: tuple[str, ...]
    seconds: float

    @property
    def per_s(self) -> float:
        return self.bars / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Progress:
    """Progress on stderr: a bar redrawn in place on a terminal, else a line
    every ``interval_s`` (logs of a service or CI stay readable)."""

    total: int
    out: TextIO = field(default_factory=lambda: sys.stderr)
    interval_s: float = 2.0
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.done < self.total and now - self._last < self._every():
            return
        self._last = now
        self._draw(now)

    def close(self) -> None:
        if self._tty():
            self.out.write("\n")
            self.out.flush()

    def _every(self) -> float:
        return 0.1 if self._tty() else self.interval_s

    def _tty(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())

    def _draw(self, now: float) -> None:
        share = self.done / self.total if self.total else 1.0
        rate = self.done / max(now - self.started, 1e-9)
        text = f"{self.done:,}/{self.total:,} bars ({share:.0%}, {rate:,.0f}/s)"
        if self._tty():
            filled = int(30 * share)
            self.out.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {text}")
        else:
            self.out.write(f"replay: {text}\n")
        self.out.flush()


class PackedPipeline:
    """Writes many packed commands on one pooled connection, then reads
    their replies; raises the first error reply after reading them all."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def execute(self, commands: Sequence[bytes]) -> None:
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(commands)])
            errors = self._read_replies(conn, len(commands))
        except BaseException:
            conn.disconnect()  # unread replies would desynchronize the connection
            raise
        finally:
            pool.release(conn)
        if errors:
            raise errors[0]

    @staticmethod
    def _read_replies(conn: Any, n: int) -> list[ResponseError]:
        errors: list[ResponseError] = []
        for _ in range(n):
            try:
                conn.read_response()
            except ResponseError as exc:
                errors.append(exc)
        return errors


def encode_rows(frame: pd.DataFrame) -> Iterator[tuple[str, ...]]:
    """Each bar's field values as decimal strings: ts, open, high, low, close, volume."""
    stamps = frame["ts"].astype("int64").tolist()
    values = frame[["open", "high", "low", "close", "volume"]].to_numpy(dtype="float64").tolist()
    return encode_values(stamps, values)


def encode_values(
    stamps: Iterable[int], values: Iterable[Sequence[float]]
) -> Iterator[tuple[str, ...]]:
    """The contract's field values of bars given as open times and
    (open, high, low, close, volume) floats (the feed's exchange rows)."""
    for ts, (o, h, lo, c, v) in zip(stamps, values, strict=True):
        yield str(ts), repr(o), repr(h), repr(lo), repr(c), repr(v)


def xadd_commands(
    stream: str, rows: Iterable[tuple[str, ...]], maxlen: int | None
) -> Iterator[bytes]:
    head: tuple[Any, ...] = (
        ("XADD", stream, "MAXLEN", "~", maxlen, "*") if maxlen else ("XADD", stream, "*")
    )
    for ts, o, h, lo, c, v in rows:
        yield hiredis.pack_command(
            (*head, "ts", ts, "open", o, "high", h, "low", lo, "close", c, "volume", v)
        )


def publish_frame(
    client: redis.Redis,
    stream: str,
    frame: pd.DataFrame,
    maxlen: int | None = None,
    progress: Progress | None = None,
) -> int:
    """XADD every bar of ``frame`` (columns ts, open, high, low, close,
    volume) to ``stream`` in order; returns the number published."""
    pipeline = PackedPipeline(client)
    chunk: list[bytes] = []
    for command in xadd_commands(stream, encode_rows(frame), maxlen):
        chunk.append(command)
        if len(chunk) == CHUNK:
            _flush(pipeline, chunk, progress)
    if chunk:
        _flush(pipeline, chunk, progress)
    return len(frame)


def _flush(pipeline: PackedPipeline, chunk: list[bytes], progress: Progress | None) -> None:
    pipeline.execute(chunk)
    if progress is not None:
        progress.update(len(chunk))
    chunk.clear()


def replay_files(
    client: redis.Redis,
    keys: Keys,
    paths: Sequence[str | Path],
    symbol: str | None = None,
    tf: str | None = None,
    maxlen: int | None = None,
    progress_out: TextIO | None = None,
) -> ReplayResult:
    """Read every file (all first, so a bad file publishes nothing), then
    publish each onto its series' stream."""
    files = [read_bar_file(path, symbol, tf) for path in paths]
    total = sum(len(f) for f in files)
    progress = Progress(total, progress_out) if progress_out is not None else None
    started = time.perf_counter()
    streams = [_publish_file(client, keys, f, maxlen, progress) for f in files]
    if progress is not None:
        progress.close()
    return ReplayResult(total, tuple(dict.fromkeys(streams)), time.perf_counter() - started)


def _publish_file(
    client: redis.Redis,
    keys: Keys,
    bar_file: BarFile,
    maxlen: int | None,
    progress: Progress | None,
) -> str:
    stream = keys.bars(bar_file.symbol, bar_file.tf)
    publish_frame(client, stream, bar_file.frame, maxlen, progress)
    return stream
