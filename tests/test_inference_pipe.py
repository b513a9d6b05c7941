"""The worker's pipe, watched by the event loop, reads a large answer whole
(uvloop's add_reader made the pipe non-blocking: a recv of an answer still
arriving raised BlockingIOError, which read as the worker's death)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

import uvloop

from quantum_daemon.inference.process import watch_pipe

BIG = b"x" * (2**20)


def send_slowly(conn: Connection, obj: object) -> None:
    """What Connection.send writes (length, then the pickle), in pieces with
    pauses: a large answer from a busy worker."""
    payload = bytes(ForkingPickler.dumps(obj))
    message = struct.pack("!i", len(payload)) + payload
    for start in range(0, len(message), 2**16):
        os.write(conn.fileno(), message[start : start + 2**16])
        time.sleep(0.005)


def test_a_large_answer_is_read_whole_from_the_watched_pipe() -> None:
    async def scenario() -> list[object]:
        ours, theirs = multiprocessing.Pipe()
        got: list[object] = []
        done = asyncio.Event()

        def readable() -> None:
            try:
                while ours.poll():
                    got.append(ours.recv())
            except OSError as exc:  # what the worker link takes for "end of pipe"
                got.append(exc)
            done.set()

        watch_pipe(ours, readable)
        threading.Thread(target=send_slowly, args=(theirs, BIG), daemon=True).start()
        await asyncio.wait_for(done.wait(), timeout=20)
        asyncio.get_running_loop().remove_reader(ours.fileno())
        return got

    got = uvloop.run(scenario())
    assert got == [BIG]
