"""Deadlines: many timeouts on one timer, fired in order, bounded when discarded.

The tests run on an event loop whose clock moves only when the test moves it (``Clock``), so
each one checks the exact moment a deadline fires, not before and not after, whatever the
load of the machine: ``Deadlines`` reads the time and arms its timer through the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from callosum_like.deadlines import COMPACT_SLACK, Deadlines

pytestmark = pytest.mark.timeout(30)

#: How far short of a deadline the clock stops to show that it has not fired yet.
JUST_BEFORE = 1e-3


class ClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is set by the test instead of read from a clock."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class Clock:
    """The clock of a ``ClockLoop``: ``await clock.at(t)`` runs every timer due by ``t``."""

    def __init__(self, loop: ClockLoop) -> None:
        self.loop = loop
        self.start = loop.now

    async def at(self, offset: float) -> None:
        """Move the clock to ``start + offset`` and let the loop run what is due by then."""
        assert self.start + offset >= self.loop.now, "the clock only moves forward"
        self.loop.now = self.start + offset
        # One loop pass moves the due timers to the ready queue, behind this task, and runs
        # them; a second pass runs what they scheduled. No I/O is involved: the number of
        # passes needed does not depend on the machine's load. Five is a margin.
        for _ in range(5):
            await asyncio.sleep(0)


def run_on_clock(body: Callable[[Clock], Coroutine[Any, Any, None]]) -> None:
    """Run ``body(clock)`` on a fresh ``ClockLoop``."""
    with asyncio.Runner(loop_factory=ClockLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, ClockLoop)
        runner.run(body(Clock(loop)))


def on_clock(test: Callable[[Clock], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """The test ``test(clock)``, run on a fresh ``ClockLoop``."""

    def run() -> None:
        run_on_clock(test)

    run.__name__ = run.__qualname__ = test.__name__  # pytest collects it under this name
    run.__doc__ = test.__doc__
    return run


@on_clock
async def test_deadlines_fire_at_their_time_in_order_across_lengths(clock: Clock) -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    deadlines.add(0.06, fired.append, "c")
    deadlines.add(0.02, fired.append, "a")
    deadlines.add(0.04, fired.append, "b")
    deadlines.add(0.02, fired.append, "a2")
    assert len(deadlines) == 4
    await clock.at(0.02 - JUST_BEFORE)
    assert fired == []
    await clock.at(0.02)
    assert fired == ["a", "a2"]
    await clock.at(0.04 - JUST_BEFORE)
    assert fired == ["a", "a2"]
    await clock.at(0.04)
    assert fired == ["a", "a2", "b"]
    await clock.at(0.06 - JUST_BEFORE)
    assert len(deadlines) == 1
    await clock.at(0.06)
    assert fired == ["a", "a2", "b", "c"]
    assert len(deadlines) == 0


@on_clock
async def test_deadlines_due_together_fire_in_time_order_not_group_order(clock: Clock) -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    deadlines.add(0.06, fired.append, "c")  # the first group made: the longest
    deadlines.add(0.02, fired.append, "a")
    deadlines.add(0.04, fired.append, "b")
    deadlines.add(0.02, fired.append, "a2")
    await clock.at(1)  # a stalled loop: all four are due when the timer fires once
    assert fired == ["a", "a2", "b", "c"]
    assert len(deadlines) == 0


@on_clock
async def test_a_discarded_deadline_never_fires_and_a_fired_one_discards_quietly(
    clock: Clock,
) -> None:
    deadlines = Deadlines()
    fired: list[int] = []
    keep = deadlines.add(0.02, fired.append, 1)
    drop = deadlines.add(0.02, fired.append, 2)
    deadlines.discard(drop)
    deadlines.discard(drop)  # twice is fine
    assert len(deadlines) == 1
    await clock.at(0.02 - JUST_BEFORE)
    assert fired == []
    await clock.at(0.02)
    assert fired == [1]
    assert len(deadlines) == 0
    deadlines.discard(keep)  # after it fired: nothing
    assert len(deadlines) == 0
    await clock.at(60)
    assert fired == [1]


@on_clock
async def test_a_deadline_added_earlier_than_the_armed_one_moves_the_timer(clock: Clock) -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    deadlines.add(30, fired.append, "late")
    deadlines.add(0.01, fired.append, "soon")
    await clock.at(0.01 - JUST_BEFORE)
    assert fired == []
    await clock.at(0.01)
    assert fired == ["soon"]
    await clock.at(30 - JUST_BEFORE)  # the timer was armed again, for the later one
    assert fired == ["soon"]
    await clock.at(30)
    assert fired == ["soon", "late"]
    deadlines.add(5, fired.append, "cleared")
    deadlines.clear()
    assert len(deadlines) == 0
    await clock.at(60)
    assert fired == ["soon", "late"]


@on_clock
async def test_memory_stays_bounded_when_one_call_is_stuck_and_the_rest_finish(
    clock: Clock,
) -> None:
    deadlines = Deadlines()
    stuck = deadlines.add(60, id, "stuck")  # holds the front of its group
    for _ in range(10 * COMPACT_SLACK):
        deadlines.discard(deadlines.add(60, id, "done"))
        assert deadlines.held <= 2 * len(deadlines) + COMPACT_SLACK + 1
    assert len(deadlines) == 1
    deadlines.discard(stuck)
    deadlines.clear()


def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom(_: object) -> None:
        raise RuntimeError("boom")

    async def body(clock: Clock) -> None:
        deadlines = Deadlines()
        fired: list[int] = []
        deadlines.add(0.01, boom, None)
        deadlines.add(0.01, fired.append, 2)
        deadlines.add(0.02, fired.append, 3)  # the timer is armed again after the failure
        with caplog.at_level(logging.ERROR, logger="callosum_like.deadlines"):
            await clock.at(0.01)
        assert fired == [2]
        assert [r.getMessage() for r in caplog.records] == [f"deadline callback {boom!r} failed"]
        await clock.at(0.02)
        assert fired == [2, 3]

    run_on_clock(body)


@on_clock
async def test_a_callback_may_add_and_discard_deadlines(clock: Clock) -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    later = deadlines.add(0.05, fired.append, "later")

    def chain(_: object) -> None:
        fired.append("first")
        deadlines.discard(later)
        deadlines.add(0.01, fired.append, "chained")  # due at 0.02

    deadlines.add(0.01, chain, None)
    await clock.at(0.01)
    assert fired == ["first"]
    await clock.at(0.02 - JUST_BEFORE)
    assert fired == ["first"]
    await clock.at(0.021)
    assert fired == ["first", "chained"]
    await clock.at(1)
    assert fired == ["first", "chained"]
    assert len(deadlines) == 0
