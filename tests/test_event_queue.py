"""The event queue's direct path: messages taken from the transport's callback, in order.

``EventQueue.take_directly`` hands a ``Received`` to the consumer's ``take`` while the
consumer waits in ``get()`` with nothing queued; what ``take`` cannot finish comes back as a
``Started`` that the next ``get()`` finishes before returning anything else. These tests
drive the queue by hand (no sockets): the order of events, what arrives while a taken
message waits, cancellation and closing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from callosum_like.errors import PeerClosedError
from callosum_like.lower.base import Connected, EventQueue, Received, Started

pytestmark = [pytest.mark.timeout(30), pytest.mark.asyncio]


def message(n: int) -> Received:
    return Received(b"k", [n.to_bytes(2, "big")])


class Consumer:
    """A ``take`` that logs what it handles; messages in ``hold`` wait for ``release``."""

    def __init__(self) -> None:
        self.handled: list[int] = []
        self.hold: set[int] = set()
        self.decline: set[int] = set()
        self.release = asyncio.get_running_loop().create_future()
        self.ended: list[str] = []
        self.queue: EventQueue | None = None
        self.offer_inside: Received | None = None

    def take(self, event: Received) -> Started | bool:
        if int.from_bytes(event.frames[0], "big") in self.decline:
            return False
        started = Started.start(self.handle(event))
        return True if started is None else started

    async def handle(self, event: Received) -> None:
        n = int.from_bytes(event.frames[0], "big")
        if self.offer_inside is not None and self.queue is not None:
            inner, self.offer_inside = self.offer_inside, None
            self.queue.offer(inner)  # a message that arrives while this one is handled
        try:
            if n in self.hold:
                await self.release
            self.handled.append(n)
        except asyncio.CancelledError:
            self.ended.append(f"{n} cancelled")
            raise
        except GeneratorExit:
            self.ended.append(f"{n} abandoned")
            raise


async def waiting_getter(queue: EventQueue) -> asyncio.Task[object]:
    task = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # it waits: nothing is queued
    return task


async def test_a_message_is_taken_while_the_consumer_waits() -> None:
    queue, consumer = EventQueue(), Consumer()
    queue.take_directly(consumer.take)
    getter = await waiting_getter(queue)
    assert queue.offer(message(1))
    assert queue.offer(message(2))
    assert consumer.handled == [1, 2]
    assert len(queue) == 0
    await asyncio.sleep(0)
    assert not getter.done()  # nothing for the consumer: both were handled
    queue.offer(Connected(b"k"))  # other events still go through get()
    assert await getter == Connected(b"k")


async def test_a_declined_message_is_queued_for_the_consumer() -> None:
    queue, consumer = EventQueue(), Consumer()
    queue.take_directly(consumer.take)
    consumer.decline = {2}
    getter = await waiting_getter(queue)
    queue.offer(message(1))  # taken
    queue.offer(message(2))  # declined: the consumer gets it
    queue.offer(message(3))  # queued behind it, not taken
    assert await getter == message(2)
    assert consumer.handled == [1]
    assert await queue.get() == message(3)


async def test_without_a_waiting_consumer_messages_are_queued() -> None:
    queue, consumer = EventQueue(), Consumer()
    queue.take_directly(consumer.take)
    queue.offer(message(1))
    assert consumer.handled == []
    assert await queue.get() == message(1)


async def test_what_waits_is_finished_before_later_events_in_order() -> None:
    queue, consumer = EventQueue(), Consumer()
    queue.take_directly(consumer.take)
    consumer.hold = {1}
    getter = await waiting_getter(queue)
    queue.offer(message(1))  # taken, then waits for ``release``
    queue.offer(message(2))  # queued behind it, not taken
    queue.offer(Connected(b"k"))
    assert consumer.handled == []
    assert len(queue) == 2
    await asyncio.sleep(0)
    assert not getter.done()  # get() is finishing message 1
    consumer.release.set_result(None)
    assert await getter == message(2)
    assert consumer.handled == [1]
    assert await queue.get() == Connected(b"k")


async def test_a_message_offered_during_take_is_queued_after_it() -> None:
    queue, consumer = EventQueue(), Consumer()
    queue.take_directly(consumer.take)
    consumer.queue, consumer.offer_inside, consumer.hold = queue, message(2), {1}
    getter = await waiting_getter(queue)
    queue.offer(message(1))
    consumer.release.set_result(None)
    assert await getter == message(2)
    assert consumer.handled == [1]


async def test_cancelling_the_consumer_cancels_what_it_finishes() -> None:
    queue, consumer = EventQueue(), Consumer()
    queue.take_directly(consumer.take)
    consumer.hold = {1}
    getter = await waiting_getter(queue)
    queue.offer(message(1))
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert consumer.ended == ["1 cancelled"]
    assert consumer.handled == []


async def test_closing_abandons_what_was_left_unfinished() -> None:
    queue, consumer = EventQueue(), Consumer()
    queue.take_directly(consumer.take)
    consumer.hold = {1}
    getter = await waiting_getter(queue)
    queue.offer(message(1))
    queue.close()
    assert consumer.ended == ["1 abandoned"]
    with pytest.raises(PeerClosedError):
        await getter
    assert queue.offer(message(2))  # dropped once closed, not taken
    assert consumer.handled == []


async def test_started_passes_on_the_result_of_what_it_waited_for() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    seen: list[int] = []

    async def body() -> None:
        seen.append(await future)

    coro: Coroutine[Any, Any, None] = body()
    started = Started.start(coro)
    assert started is not None
    assert seen == []
    loop.call_soon(future.set_result, 7)
    await started
    assert seen == [7]
    yielded = Started.start(asyncio.sleep(0))  # a bare yield also waits
    assert yielded is not None
    await yielded
