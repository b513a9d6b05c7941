"""Serving waits when bookkeeping is behind: the answers waiting for it are
bounded (the soak saw an unbounded queue grow the daemon by 780 MB/h)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quantum_daemon.inference.bookkeeping import MAX_ANSWERS_WAITING
from quantum_daemon.inference.context import Answered
from quantum_daemon.inference.messages import PredictAnswer
from tests.inference_helpers import inference, make_config


def empty_answer(n: int) -> Answered:
    return Answered(PredictAnswer(n, "TESTUSDT", "1h", (), (), ()), ())


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
