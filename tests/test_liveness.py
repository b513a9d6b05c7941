"""Liveness that does not lie: a loop that raises or returns ends the daemon
(crash-only), a loop that stalls turns /readyz and /healthz to 503 with its
name and stops the systemd watchdog pings, idle loops keep beating, and a
real stall (Redis paused) recovers by itself. Real daemon processes, a real
redis-server; the faults of ``tests/loop_faults.py`` strike the control loop."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_daemon.runtime.aio import next_until_stopped, sleep_or_stop, wait_first
from quantum_daemon.runtime.liveness import Liveness, Pulse, beat, running
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.http_helpers import get_json, wait_code

CONTROL_LOOP = "lifecycle-control"


# -- the registry, on a fake clock ---------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_silent_beyond_its_bound_is_stalled_until_it_beats() -> None:
    clock = FakeClock()
    liveness = Liveness(clock)
    fast, slow = liveness.watch("fast", 2.0), liveness.watch("slow", 10.0)
    clock.now += 5
    fast_problem = liveness.check()
    assert [(p.loop, p.state) for p in fast_problem] == [("fast", "stalled")]
    assert "no progress for 5.0s (bound 2s)" in str(fast_problem[0])
    fast.beat()
    assert liveness.check() == []
    slow.ended = "raised RuntimeError('x')"
    assert [(p.loop, p.state) for p in liveness.problems()] == [("slow", "dead")]


def test_beat_reaches_only_the_loop_it_runs_in() -> None:
    clock = FakeClock()
    pulse = Pulse("a", 1.0, clock)
    clock.now += 3
    beat()  # outside any loop: nothing to beat
    assert pulse.silent_s() == 3
    with running(pulse):
        beat()
    assert pulse.silent_s() == 0


def test_a_loop_kept_busy_by_its_queue_is_not_stalled() -> None:
    """The soak found it: bookkeeping that never finds its queue empty never
    waited, so it never beat, and /readyz said "stalled" while it worked."""

    async def scenario() -> tuple[float, int]:
        pulse = Pulse("books", 1.0)
        stop = asyncio.Event()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(40):
            queue.put_nowait(n)
        worst, handled = 0.0, 0

        async def books() -> None:
            nonlocal worst, handled
            with running(pulse):
                while (await next_until_stopped(queue, stop)) is not None:
                    await asyncio.sleep(0.02)  # work slower than what arrives
                    handled += 1
                    worst = max(worst, pulse.silent_s())
                    if handled < 60:
                        queue.put_nowait(handled)
                    else:
                        stop.set()

        await books()
        return worst, handled

    worst, handled = asyncio.run(scenario())
    assert handled == 60 + 39  # it went on until told to stop, then drained the queue
    assert worst < 0.1  # one item's work, not the whole busy spell (2 s)


def test_waiting_in_the_shared_helpers_beats_while_idle() -> None:
    async def scenario() -> tuple[float, float]:
        pulse = Pulse("idle", 1.0)
        stop = asyncio.Event()
        samples: list[float] = []

        async def sampler() -> None:
            for _ in range(8):
                await asyncio.sleep(0.25)
                samples.append(pulse.silent_s())

        async def idle_loop() -> None:
            with running(pulse):
                await wait_first(asyncio.Event(), timeout_s=2.2)
                await sleep_or_stop(stop, 0.1)

        await asyncio.gather(idle_loop(), sampler())
        return max(samples), pulse.silent_s()

    worst, after = asyncio.run(scenario())
    assert worst < 0.9  # beats every IDLE_BEAT_S (0.5 s) while it waits
    assert after < 0.5


def test_a_cancel_swallowed_on_the_way_lands_at_the_next_wait() -> None:
    """Python 3.11's wait_for can return a result while its task is being
    cancelled (redis-py sends every command under it); the loop must not go on."""

    async def scenario() -> tuple[bool, int]:
        turns = 0
        stop = asyncio.Event()

        async def loop_that_lost_its_cancel(stop: asyncio.Event) -> None:
            nonlocal turns
            while not await sleep_or_stop(stop, 0.01):
                turns += 1
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:
                    pass  # what the racing wait_for does: the cancel is gone

        task = asyncio.create_task(loop_that_lost_its_cancel(stop))
        await asyncio.sleep(0.03)
        task.cancel()
        await asyncio.wait({task}, timeout=1)
        ended_by_the_cancel = task.cancelled()
        stop.set()  # without the fix, only this ends it
        await asyncio.wait({task})
        return ended_by_the_cancel, turns

    assert asyncio.run(scenario()) == (True, 1)


def test_a_cancel_swallowed_while_draining_after_stop_ends_the_drain() -> None:
    """Once stopped, ``next_until_stopped`` hands out what is queued without
    awaiting; a cancel lost in the handling must still end the drain (the soak
    found the daemon busy with its bookkeeping backlog long after SIGTERM)."""

    async def scenario() -> tuple[bool, int]:
        handled = 0
        stop = asyncio.Event()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(1000):
            queue.put_nowait(i)
        stop.set()

        async def drain_that_lost_its_cancel() -> None:
            nonlocal handled
            while await next_until_stopped(queue, stop) is not None:
                handled += 1
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    pass  # what the racing wait_for does: the cancel is gone

        task = asyncio.create_task(drain_that_lost_its_cancel())
        await asyncio.sleep(0.035)
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        return task.cancelled(), handled

    cancelled, handled = asyncio.run(scenario())
    assert cancelled
    assert handled < 10


# -- real daemons ----------------------------------------------------------------
def _faulty(
    tmp_path: Path, redis_url: str, kind: str, extra: str = ""
) -> tuple[DaemonProcess, int]:
    port = api_port()
    config = write_config(tmp_path / "c.toml", redis_url, tmp_path / "data", port, extra)
    env = {"QUANTUM_TEST_FAULT": kind, "QUANTUM_TEST_FAULT_TRIGGER": str(tmp_path / "strike")}
    return DaemonProcess(config, env=env, module="tests.loop_faults"), port


def _strike(tmp_path: Path) -> None:
    (tmp_path / "strike").touch()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["raise", "return"])
def test_a_loop_that_dies_ends_the_process(tmp_path: Path, redis_url: str, kind: str) -> None:
    daemon, port = _faulty(tmp_path, redis_url, kind)
    daemon.start()
    try:
        daemon.wait_for("daemon.ready")
        wait_code(f"http://127.0.0.1:{port}/readyz", 200)
        _strike(tmp_path)
        code = daemon.wait(timeout=40)
        assert code == 1
        died = daemon.wait_for("liveness.died", timeout=1)
        assert died["loop"] == CONTROL_LOOP
        assert ("RuntimeError" in died["why"]) if kind == "raise" else ("returned" in died["why"])
        # The other loops ended by themselves; the failsafe timer did not have to.
        assert daemon.has("daemon.crashed") and not daemon.has("daemon.forced_exit")
    finally:
        daemon.kill()


def _watchdog_pings(sock: socket.socket, seconds: float) -> int:
    """WATCHDOG=1 messages received within ``seconds``."""
    deadline = time.monotonic() + seconds
    count = 0
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            break
        count += "WATCHDOG=1" in message
    return count


@pytest.fixture
def notify_socket(tmp_path: Path):  # type: ignore[no-untyped-def]
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    yield address, sock
    sock.close()


@pytest.mark.timeout(90)
def test_a_stalled_loop_is_named_by_readyz_and_stops_the_watchdog(
    tmp_path: Path, redis_url: str, notify_socket: tuple[str, socket.socket]
) -> None:
    address, sock = notify_socket
    daemon, port = _faulty(tmp_path, redis_url, "stall", "stall_s = 2.0\n")
    daemon.env["NOTIFY_SOCKET"] = address
    daemon.start()
    try:
        daemon.wait_for("daemon.ready")
        wait_code(f"http://127.0.0.1:{port}/readyz", 200)
        assert _watchdog_pings(sock, 1.5) >= 2  # heartbeat_interval_s = 0.5
        _strike(tmp_path)
        body = wait_code(f"http://127.0.0.1:{port}/readyz", 503, timeout=15)
        assert f"loop {CONTROL_LOOP} stalled" in body["reason"]
        code, health = get_json(f"http://127.0.0.1:{port}/healthz")
        assert code == 503 and CONTROL_LOOP in health["reason"]
        assert daemon.wait_for("liveness.stalled", timeout=5)["loop"] == CONTROL_LOOP
        _watchdog_pings(sock, 0.6)  # a ping sent just before the check
        assert _watchdog_pings(sock, 2.5) == 0
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.kill()


@pytest.mark.timeout(90)
def test_idle_loops_keep_beating(
    tmp_path: Path, redis_url: str, notify_socket: tuple[str, socket.socket]
) -> None:
    address, sock = notify_socket
    port = api_port()
    config = write_config(
        tmp_path / "c.toml", redis_url, tmp_path / "data", port, "stall_s = 2.0\n"
    )
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": address}).start()
    try:
        daemon.wait_for("daemon.ready")
        wait_code(f"http://127.0.0.1:{port}/readyz", 200)
        deadline = time.monotonic() + 6
        answers = 0
        while time.monotonic() < deadline:
            code, body = get_json(f"http://127.0.0.1:{port}/readyz")
            assert code != 503, body  # no answer in time (a loaded machine) is no verdict
            answers += code == 200
            time.sleep(0.2)
        assert answers >= 10
        assert _watchdog_pings(sock, 1.5) >= 2
        _, status = get_json(f"http://127.0.0.1:{port}/api/status")
        assert {"ingest", CONTROL_LOOP, "heartbeat", "inference-worker"} <= status["loops"].keys()
        assert all(loop["state"] == "alive" for loop in status["loops"].values())
        assert not daemon.has("liveness.stalled")
    finally:
        daemon.kill()


def _wait_reason(url: str, text: str, timeout: float) -> tuple[int, Any]:
    """The first answer whose reason contains ``text`` (each loop stalls in turn)."""
    deadline = time.monotonic() + timeout
    last: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        last = get_json(url)
        if last[1] and text in last[1].get("reason", ""):
            return last
        time.sleep(0.1)
    raise AssertionError(f"{url} never said {text!r}; last {last}")


@pytest.mark.timeout(120)
def test_a_real_stall_redis_paused_is_reported_and_recovers(tmp_path: Path, redis_url: str) -> None:
    port = api_port()
    config = write_config(
        tmp_path / "c.toml", redis_url, tmp_path / "data", port, "stall_s = 2.0\n"
    )
    # Replies wait out the pause (the socket timeout is connect_timeout_s + 5).
    text = config.read_text().replace("[redis]\n", "[redis]\nconnect_timeout_s = 20.0\n", 1)
    config.write_text(text)
    daemon = DaemonProcess(config).start()
    client = redis.Redis.from_url(redis_url)
    try:
        daemon.wait_for("daemon.ready")
        wait_code(f"http://127.0.0.1:{port}/readyz", 200)
        client.execute_command("CLIENT", "PAUSE", "6000", "ALL")
        stalled = _wait_reason(f"http://127.0.0.1:{port}/readyz", "loop ingest stalled", 10)
        assert stalled[0] == 503
        wait_code(f"http://127.0.0.1:{port}/readyz", 200, timeout=30)
        assert daemon.wait_for("liveness.recovered", timeout=5)
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        client.execute_command("CLIENT", "UNPAUSE")
        client.close()
        daemon.kill()
