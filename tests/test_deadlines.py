"""Deadlines: many timeouts on one timer, fired in order, bounded when discarded."""

from __future__ import annotations

import asyncio
import logging

import pytest

from callosum_like.deadlines import COMPACT_SLACK, Deadlines

pytestmark = [pytest.mark.timeout(30), pytest.mark.asyncio]


async def test_deadlines_fire_in_order_across_lengths() -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    deadlines.add(0.06, fired.append, "c")
    deadlines.add(0.02, fired.append, "a")
    deadlines.add(0.04, fired.append, "b")
    deadlines.add(0.02, fired.append, "a2")
    assert len(deadlines) == 4
    await asyncio.sleep(0.15)
    assert fired == ["a", "a2", "b", "c"]
    assert len(deadlines) == 0


async def test_a_discarded_deadline_never_fires_and_a_fired_one_discards_quietly() -> None:
    deadlines = Deadlines()
    fired: list[int] = []
    keep = deadlines.add(0.02, fired.append, 1)
    drop = deadlines.add(0.02, fired.append, 2)
    deadlines.discard(drop)
    deadlines.discard(drop)  # twice is fine
    await asyncio.sleep(0.08)
    assert fired == [1]
    deadlines.discard(keep)  # after it fired: nothing
    assert len(deadlines) == 0


async def test_a_deadline_added_earlier_than_the_armed_one_moves_the_timer() -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    deadlines.add(30, fired.append, "late")
    deadlines.add(0.01, fired.append, "soon")
    await asyncio.sleep(0.06)
    assert fired == ["soon"]
    deadlines.clear()
    assert len(deadlines) == 0


async def test_memory_stays_bounded_when_one_call_is_stuck_and_the_rest_finish() -> None:
    deadlines = Deadlines()
    stuck = deadlines.add(60, id, "stuck")  # holds the front of its group
    for _ in range(10 * COMPACT_SLACK):
        deadlines.discard(deadlines.add(60, id, "done"))
        assert deadlines.held <= 2 * len(deadlines) + COMPACT_SLACK + 1
    assert len(deadlines) == 1
    deadlines.discard(stuck)
    deadlines.clear()


async def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    deadlines = Deadlines()
    fired: list[int] = []

    def boom(_: object) -> None:
        raise RuntimeError("boom")

    deadlines.add(0.01, boom, None)
    deadlines.add(0.01, fired.append, 2)
    with caplog.at_level(logging.ERROR, logger="callosum_like.deadlines"):
        await asyncio.sleep(0.06)
    assert fired == [2]
    assert "deadline callback" in caplog.text


async def test_a_callback_may_add_and_discard_deadlines() -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    later = deadlines.add(0.05, fired.append, "later")

    def chain(_: object) -> None:
        fired.append("first")
        deadlines.discard(later)
        deadlines.add(0.01, fired.append, "chained")

    deadlines.add(0.01, chain, None)
    await asyncio.sleep(0.1)
    assert fired == ["first", "chained"]
