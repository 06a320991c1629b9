"""The forwarder's delay line: held until due, in order, bounded (no root needed).

The expected behaviour is the line's contract (``delayline``'s docstring): an item is never
released before its arrival time plus its delay; items leave in the order they came, even
when a later one is due first; ``put_nowait`` refuses what does not fit, except one item
into an empty line; ``wait_for_room`` waits for the draining side; ``close`` drains first.
"""

from __future__ import annotations

import asyncio

import pytest

from callosum_like.tools.netbed.delayline import DelayLine

pytestmark = pytest.mark.timeout(10)


def new_line(limit: int = 100) -> DelayLine:
    return DelayLine(limit, asyncio.get_running_loop().time)


@pytest.mark.asyncio
async def test_an_item_is_not_released_before_its_delay_has_passed() -> None:
    loop = asyncio.get_running_loop()
    line = new_line()
    put_at = loop.time()
    assert line.put_nowait(b"x", 0.05)
    assert await line.get() == b"x"
    assert loop.time() >= put_at + 0.05


@pytest.mark.asyncio
async def test_items_keep_their_order_even_when_a_later_one_is_due_first() -> None:
    line = new_line()
    assert line.put_nowait(b"slow", 0.05)
    assert line.put_nowait(b"fast", 0.0)  # due before "slow", but came after it
    assert [await line.get(), await line.get()] == [b"slow", b"fast"]


@pytest.mark.asyncio
async def test_put_nowait_refuses_what_does_not_fit_but_never_wedges_an_empty_line() -> None:
    line = new_line(limit=10)
    assert line.put_nowait(b"a" * 25, 0)  # larger than the limit, into an empty line
    assert line.room <= 0
    assert not line.put_nowait(b"b", 0)
    assert await line.get() == b"a" * 25
    assert line.room == 10
    assert line.put_nowait(b"c" * 6, 0)
    assert line.room == 4
    assert not line.put_nowait(b"d" * 5, 0)
    assert line.put_nowait(b"e" * 4, 0)
    assert line.peak == 25


@pytest.mark.asyncio
async def test_wait_for_room_returns_only_once_the_draining_side_took_something() -> None:
    line = new_line(limit=10)
    assert line.put_nowait(b"a" * 10, 0)
    waiting = asyncio.create_task(line.wait_for_room())
    await asyncio.sleep(0)
    assert not waiting.done()  # full: the filling side must wait
    assert await line.get() == b"a" * 10
    assert await asyncio.wait_for(waiting, 5) == 10


@pytest.mark.asyncio
async def test_a_closed_line_delivers_what_it_holds_then_ends() -> None:
    line = new_line()
    assert line.put_nowait(b"last", 0.01)
    line.close()
    assert await line.wait_for_room() == 0
    assert await line.get() == b"last"
    assert await line.get() is None
    with pytest.raises(RuntimeError, match="closed"):
        line.put_nowait(b"late", 0)


def test_a_line_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        DelayLine(0, lambda: 0.0)
