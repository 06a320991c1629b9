"""A remote that streams past the credit it was granted costs itself those items, not memory.

The remote is hand-written (``rawpeer``): it ignores flow control on purpose. The consumer
takes one item and then stops reading, so that exactly ``STREAM_WINDOW`` items fit in its
inbox; everything past them must be dropped and counted, and the stream still ends.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import callosum_like as cl
from callosum_like.wire import messages as m
from callosum_like.wire.codec import pack_body

from .conftest import bind_address
from .rawpeer import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

EXCESS = 3


async def test_items_past_the_credit_are_dropped_and_counted(
    peers: contextlib.AsyncExitStack, transport_kind: str
) -> None:
    server = await peers.enter_async_context(cl.Peer(bind=bind_address(transport_kind)))
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake("flooder")
        got: list[int] = []
        first_taken, go_on = asyncio.Event(), asyncio.Event()

        async def consume() -> None:
            async for item in server.stream("produce", to="flooder"):
                got.append(item)
                first_taken.set()
                await go_on.wait()  # reads nothing more until the flood is in

        consumer = asyncio.create_task(consume())
        call = await raw.receive()
        assert isinstance(call, m.Call)
        assert call.stream
        await raw.send(m.StreamItem(id=call.id, body=pack_body(0)))
        await first_taken.wait()
        for n in range(1, 1 + m.STREAM_WINDOW + EXCESS):  # no credit came back for these
            await raw.send(m.StreamItem(id=call.id, body=pack_body(n)))
        await raw.send(m.StreamEnd(id=call.id))
        await raw.send(m.Ping())
        while not isinstance(await raw.receive(), m.Pong):  # all of the above was handled
            pass
        assert server.statistics().dropped_messages == EXCESS
        go_on.set()
        async with asyncio.timeout(10):
            await consumer
        assert got == list(range(1 + m.STREAM_WINDOW))  # the window's worth, then the end
    finally:
        await raw.aclose()
