"""Streams: async-generator handlers consumed with ``peer.stream`` over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.wire.messages import STREAM_WINDOW

from .conftest import PairFactory, until

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def echo(request: cl.Request) -> Any:
    return request.body


async def count_to(request: cl.Request) -> AsyncIterator[Any]:
    for i in range(request.body):
        yield {"i": i, "pad": b"x" * 100}


async def test_items_arrive_in_order(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("count", count_to)
    items = [item["i"] async for item in client.stream("count", 500)]
    assert items == list(range(500))
    assert [x async for x in client.stream("count", 0)] == []


async def test_streams_work_in_both_directions(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    client.handle_function("count", count_to)
    items = [item["i"] async for item in server.stream("count", 5, to="agent-1")]
    assert items == [0, 1, 2, 3, 4]


async def test_slow_consumer_holds_the_producer_within_the_window(
    make_pair: PairFactory,
) -> None:
    server, client = await make_pair()
    produced = 0

    async def endless(request: cl.Request) -> AsyncIterator[Any]:
        nonlocal produced
        while True:
            await asyncio.sleep(0)  # as a producer doing I/O would: unheld, it shares the loop
            produced += 1
            yield produced

    server.handle_function("endless", endless)
    server.handle_function("echo", echo)

    async def held_at(limit: int) -> None:
        """The producer gets to ``limit`` items, and no further while we read nothing."""
        await until(lambda: produced >= limit, lambda: f"{limit} items produced, not {produced}")
        # Round trips on the same link: loop turns in which a producer that had credit it
        # should not have would run on. With the window kept nothing can make ``produced``
        # pass ``limit`` while we read nothing, so this cannot fail falsely.
        for number in range(3):
            assert await client.invoke("echo", number) == number
        assert produced == limit

    stream = client.stream("endless")
    try:
        async with asyncio.timeout(10):
            assert await anext(stream) == 1
        # The window sent (one item of it read), and the next item waiting for credit.
        await held_at(STREAM_WINDOW + 1)
        for expected in range(2, 3 * STREAM_WINDOW + 2):
            assert await anext(stream) == expected
        # Credit for the 48 read before the last one came back, half a window at a time.
        await held_at(4 * STREAM_WINDOW + 1)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_leaving_early_cancels_the_remote_generator(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    closed = asyncio.Event()

    async def endless(request: cl.Request) -> AsyncIterator[Any]:
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.set()

    server.handle_function("endless", endless)
    async for n in client.stream("endless"):
        if n == 3:
            break
    async with asyncio.timeout(5):
        await closed.wait()
    await until(
        lambda: server.statistics().requests_in_flight == 0,
        lambda: f"the generator's call still held: {server.statistics().requests_in_flight}",
    )


async def test_error_in_the_generator_raises_at_the_consumer(make_pair: PairFactory) -> None:
    server, client = await make_pair()

    async def broken(request: cl.Request) -> AsyncIterator[Any]:
        yield 1
        yield 2
        raise RuntimeError("generator broke")

    server.handle_function("broken", broken)
    got = []
    with pytest.raises(cl.RPCUserError, match="generator broke"):
        async for item in client.stream("broken"):
            got.append(item)
    assert got == [1, 2]


async def test_invoke_and_stream_refuse_the_other_kind(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("count", count_to)
    server.handle_function("plain", lambda r: asyncio.sleep(0, 1))
    with pytest.raises(cl.RPCInternalError, match="stream"):
        await client.invoke("count", 3)
    with pytest.raises(cl.RPCInternalError, match="not a stream"):
        async for _ in client.stream("plain"):
            pass


STREAM_TIMEOUT = 1.5


async def test_a_stream_timeout_cancels_the_remote_generator(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    release, started, closed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def hold(request: cl.Request) -> None:
        await release.wait()

    async def stalls(request: cl.Request) -> AsyncIterator[Any]:
        started.set()
        try:
            yield 1
            await asyncio.sleep(3600)
            yield 2
        finally:
            closed.set()

    # The server also stops the generator at the call's timeout, counted from when it
    # starts: hold the stream behind another call of its order key for a third of the
    # timeout, so that the server's own deadline comes that long after ours, and only our
    # Cancel can have stopped the generator when the checks below run.
    server.handle_function("hold", hold, ordering=cl.Ordering.SERIALIZED)
    server.handle_function("stalls", stalls, ordering=cl.Ordering.SERIALIZED)
    server.handle_function("echo", echo)
    held = asyncio.create_task(client.invoke("hold", order_key="k"))
    got: list[Any] = []

    async def consume() -> None:
        async for item in client.stream("stalls", order_key="k", timeout=STREAM_TIMEOUT):
            got.append(item)

    consuming = asyncio.create_task(consume())
    try:
        await until(
            lambda: server.statistics().requests_queued == 1,
            lambda: "the stream was not queued behind the held call",
        )
        await asyncio.sleep(STREAM_TIMEOUT / 3)  # not followed by a check: see above
        release.set()
        await held
        with pytest.raises(TimeoutError):
            await consuming
    finally:
        consuming.cancel()
        await asyncio.gather(consuming, return_exceptions=True)
    assert got == [1]
    assert started.is_set()
    # Our Cancel left before the second of these calls, and the server handles a link's
    # messages in order, stopping the generator before it goes on: by the time the second
    # call is answered, the generator's ``finally`` has run.
    for number in range(2):
        assert await client.invoke("echo", number) == number
    assert closed.is_set(), "the timed-out stream's generator still runs on the server"


async def test_server_closing_ends_the_stream_with_cancellation(make_pair: PairFactory) -> None:
    server, client = await make_pair()

    async def slow(request: cl.Request) -> AsyncIterator[Any]:
        yield 1
        await asyncio.sleep(3600)
        yield 2  # pragma: no cover

    server.handle_function("slow", slow)
    stream = client.stream("slow")
    assert await anext(stream) == 1
    await server.aclose()
    with pytest.raises((cl.RPCCancelledError, cl.PeerDisconnectedError)):
        await anext(stream)
