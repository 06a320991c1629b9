"""Streams: async-generator handlers consumed with ``peer.stream`` over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.wire.messages import STREAM_WINDOW

from .conftest import PairFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


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
            produced += 1
            yield produced

    server.handle_function("endless", endless)
    stream = client.stream("endless")
    assert await anext(stream) == 1
    await asyncio.sleep(0.3)  # the producer runs free for a while, if it can
    assert produced <= STREAM_WINDOW + 2
    for _ in range(3 * STREAM_WINDOW):
        await anext(stream)
    await asyncio.sleep(0.3)
    assert produced <= 4 * STREAM_WINDOW + 2
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
    await asyncio.sleep(0.05)
    assert server.statistics().requests_in_flight == 0


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


async def test_stream_timeout(make_pair: PairFactory) -> None:
    server, client = await make_pair()

    async def stalls(request: cl.Request) -> AsyncIterator[Any]:
        yield 1
        await asyncio.sleep(3600)
        yield 2

    server.handle_function("stalls", stalls)
    got = []
    with pytest.raises(TimeoutError):
        async for item in client.stream("stalls", timeout=0.3):
            got.append(item)
    assert got == [1]


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
