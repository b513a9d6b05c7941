"""Serving waits when bookkeeping is behind: the answers waiting for it are
bounded (the soak saw an unbounded queue grow the daemon by 780 MB/h)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quantum_daemon.inference.bookkeeping import MAX_ANSWERS_WAITING, MAX_BARS_WAITING
from quantum_daemon.inference.context import Answered
from quantum_daemon.inference.messages import PredictAnswer
from tests.inference_helpers import inference, make_config


def empty_answer(n: int) -> Answered:
    return Answered(PredictAnswer(n, "TESTUSDT", "1h", (), (), ()), ())


def answer_of(n: int, bars: int) -> Answered:
    """An answer on ``bars`` bars (no model answered them: nothing to score)."""
    ts = tuple(range(0, bars * 3_600_000, 3_600_000))
    return Answered(PredictAnswer(n, "TESTUSDT", "1h", ts, (1.0,) * bars, ()), ())


def test_serving_waits_for_room_once_bookkeeping_is_this_far_behind(
    tmp_path: Path, redis_url: str
) -> None:
    async def scenario() -> tuple[int, bool, bool, int]:
        async with inference(make_config(redis_url, tmp_path / "data")) as (service, _):
            books = service.books
            for n in range(MAX_ANSWERS_WAITING):
                await asyncio.wait_for(books.hand_over(empty_answer(n)), timeout=1)
            queued = books.work.qsize()
            one_more = asyncio.ensure_future(books.hand_over(empty_answer(-1)))
            await asyncio.sleep(0.2)
            waited = not one_more.done()
            await books.handle_work(books.work.get_nowait())  # bookkeeping moves one on
            await asyncio.wait_for(one_more, timeout=1)
            return queued, waited, one_more.done(), books.answers_waiting

    queued, waited, went_in, waiting = asyncio.run(scenario())
    assert queued == MAX_ANSWERS_WAITING
    assert waited  # the 33rd answer was held back ...
    assert went_in  # ... until bookkeeping had handled one
    assert waiting == MAX_ANSWERS_WAITING


def test_serving_waits_once_the_bars_waiting_would_pass_their_bound(
    tmp_path: Path, redis_url: str
) -> None:
    """The memory is in the bars: a few answers of a long catch-up each must
    wait as well (32 answers of 1,000 bars held 32,000 signals)."""

    async def scenario() -> tuple[bool, bool, bool, int]:
        async with inference(make_config(redis_url, tmp_path / "data")) as (service, _):
            books = service.books
            oversized = answer_of(1, MAX_BARS_WAITING + 500)
            await asyncio.wait_for(books.hand_over(oversized), timeout=1)  # alone: it goes in
            second = asyncio.ensure_future(books.hand_over(answer_of(2, 10)))
            await asyncio.sleep(0.2)
            held_back = not second.done()
            await books.handle_work(books.work.get_nowait())
            await asyncio.wait_for(second, timeout=1)
            third = asyncio.ensure_future(books.hand_over(answer_of(3, MAX_BARS_WAITING - 5)))
            await asyncio.sleep(0.2)
            also_held = not third.done()  # 10 + 1,995 bars would pass the bound
            await books.handle_work(books.work.get_nowait())
            await asyncio.wait_for(third, timeout=1)
            return held_back, also_held, third.done(), books.bars_waiting

    held_back, also_held, went_in, bars = asyncio.run(scenario())
    assert held_back and also_held and went_in
    assert bars == MAX_BARS_WAITING - 5
