"""Streamed bodies: ``invoke`` with an async iterable, read by the handler with ``async for``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

import callosum_like as cl

from .conftest import PairFactory, until

pytestmark = pytest.mark.timeout(30)


async def items_of(values: list[Any]) -> AsyncIterator[Any]:
    for value in values:
        yield value


async def total(request: cl.Request) -> dict[str, Any]:
    count, size = 0, 0
    async for item in request.body:
        count += 1
        size += len(item)
    return {"count": count, "size": size}


@pytest.mark.asyncio
@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 100])
async def test_every_item_reaches_the_handler_in_order(make_pair: PairFactory, count: int) -> None:
    async def collect(request: cl.Request) -> list[Any]:
        return [item async for item in request.body]

    server, client = await make_pair()
    server.handle_function("collect", collect)
    values = [{"n": n, "data": b"x" * n} for n in range(count)]
    assert await client.invoke("collect", items_of(values)) == values


@pytest.mark.asyncio
async def test_the_bound_side_streams_to_the_connecting_side(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    client.handle_function("total", total)
    result = await server.invoke("total", items_of([b"ab", b"cde"]))
    assert result == {"count": 2, "size": 5}


@pytest.mark.asyncio
async def test_items_larger_than_a_chunk(make_pair: PairFactory) -> None:
    server, client = await make_pair(chunk_size=1024, client={"chunk_size": 1024})
    server.handle_function("total", total)
    parts = [os.urandom(5000), b"", os.urandom(1024), os.urandom(3)]
    assert await client.invoke("total", items_of(parts)) == {"count": 4, "size": 6027}


@pytest.mark.asyncio
async def test_a_slow_handler_holds_the_caller_a_window_ahead(make_pair: PairFactory) -> None:
    produced = 0
    release = asyncio.Event()

    async def counting() -> AsyncIterator[int]:
        nonlocal produced
        for number in range(200):
            produced += 1
            yield number

    async def slow(request: cl.Request) -> int:
        await release.wait()
        return sum([item async for item in request.body])

    async def echo(request: cl.Request) -> Any:
        return request.body

    server, client = await make_pair()
    server.handle_function("slow", slow)
    server.handle_function("echo", echo)
    ahead = cl.Peer.UPLOAD_WINDOW + 1  # the window sent, and one item waiting for credit
    call = asyncio.create_task(client.invoke("slow", counting()))
    try:
        # The caller runs ahead of a handler that reads nothing, up to the window...
        await until(lambda: produced >= ahead, lambda: f"{ahead} items produced, not {produced}")
        # ...and no further. Round trips on the same link give a producer that had credit it
        # should not have the loop turns to run on; with the window kept, nothing can make
        # ``produced`` pass ``ahead`` while the handler waits, so this cannot fail falsely.
        for number in range(3):
            assert await client.invoke("echo", number) == number
        assert produced == ahead
        assert not call.done()
        release.set()  # the handler reads: the caller goes on to the end
        assert await call == sum(range(200))
        assert produced == 200
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_handler_may_answer_before_reading_everything(make_pair: PairFactory) -> None:
    """``invoke`` returns the handler's value, and the caller's iterator is stopped: pulled
    no further than the window, and closed (its ``finally`` runs) once ``invoke`` let go."""
    pulled = 0
    closed = asyncio.Event()

    async def first(request: cl.Request) -> Any:
        async for item in request.body:
            return item
        return None

    async def endless() -> AsyncIterator[int]:
        nonlocal pulled
        try:
            while True:
                pulled += 1
                yield pulled
        finally:
            closed.set()

    server, client = await make_pair()
    server.handle_function("first", first)
    call = asyncio.create_task(client.invoke("first", endless()))
    # Not asyncio.timeout: invoke swallows a cancellation that reaches it while it waits for
    # its upload to stop, so a timeout would pass unnoticed.
    await asyncio.wait({call}, timeout=10)
    if not call.done():
        call.cancel()
        pytest.fail("invoke did not return: it waits for the upload it should have stopped")
    assert call.result() == 1
    at_return = pulled
    try:
        async with asyncio.timeout(10):
            await closed.wait()
    except TimeoutError:
        pytest.fail(f"the caller's iterator was never closed ({pulled} items pulled)")
    assert pulled == at_return  # nothing pulled once the answer came
    assert 1 <= pulled <= cl.Peer.UPLOAD_WINDOW + 1  # the window, and the one awaiting credit
    assert await client.invoke("first", items_of(["again"])) == "again"  # the link is fine


@pytest.mark.asyncio
async def test_an_iterator_error_cancels_the_handler_and_raises_at_the_caller(
    make_pair: PairFactory,
) -> None:
    cancelled, reading = asyncio.Event(), asyncio.Event()

    async def reader(request: cl.Request) -> None:
        try:
            async for _ in request.body:
                reading.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def broken() -> AsyncIterator[int]:
        yield 1
        await reading.wait()  # the handler runs (else the Cancel stops it before it starts)
        raise ValueError("the source failed")

    server, client = await make_pair()
    server.handle_function("reader", reader)
    with pytest.raises(ValueError, match="the source failed"):
        await client.invoke("reader", broken())
    async with asyncio.timeout(5):
        await cancelled.wait()


@pytest.mark.asyncio
async def test_handler_errors_and_timeouts_reach_the_caller(make_pair: PairFactory) -> None:
    async def fails(request: cl.Request) -> None:
        async for item in request.body:
            raise KeyError(item)

    async def stuck(request: cl.Request) -> None:
        await asyncio.sleep(10)

    server, client = await make_pair()
    server.handle_function("fails", fails)
    server.handle_function("stuck", stuck)
    with pytest.raises(cl.RPCUserError) as info:
        await client.invoke("fails", items_of(["boom"]))
    assert info.value.name == "KeyError"
    with pytest.raises(TimeoutError):
        await client.invoke("stuck", items_of(range(100)), timeout=0.2)


@pytest.mark.asyncio
async def test_unencodable_and_oversize_items_raise_at_the_caller(
    make_pair: PairFactory,
) -> None:
    server, client = await make_pair(max_body_size=10_000)
    server.handle_function("total", total)
    with pytest.raises(TypeError, match="msgpack"):
        await client.invoke("total", items_of([b"ok", object()]))
    with pytest.raises(cl.MessageTooLargeError):
        await client.invoke("total", items_of([b"ok", b"x" * 20_000]))
    assert await client.invoke("total", items_of([b"ok"])) == {"count": 1, "size": 2}
