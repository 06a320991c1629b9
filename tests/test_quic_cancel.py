"""Cancelling a call over QUIC resets its stream, and the link carries on.

A 16 MiB upload to a handler that reads none of it (the Peer's upload credit holds it back)
is cancelled by its caller: the transport resets the call's stream, the callee's handler is
cancelled without a barrier waiting for items that never come, and calls after it, of one
order key, are served on the same connection. (What the reset frees in the transport, with
the callee's flow control holding an upload back: tests/transports/test_quic_flow.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.lower.base import CONNECTED_KEY

from .conftest import bind_address, connect_address
from .test_quic_resume import KeepingQUIC

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]


async def test_a_cancelled_upload_frees_its_stream_and_calls_of_a_key_go_on(
    peers: contextlib.AsyncExitStack,
) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def sink(request: cl.Request) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()  # reads nothing of its upload
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def echo(request: cl.Request) -> Any:
        return request.body

    server = await peers.enter_async_context(cl.Peer(bind=bind_address("quic"), identity="server"))
    server.handle_function("sink", sink)
    server.handle_function("echo", echo)
    keeping = KeepingQUIC()
    connections = keeping.connections
    client = await peers.enter_async_context(
        cl.Peer(connect=connect_address(server), identity="agent", transport=keeping)
    )
    sent = [0]

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(64):  # 16 MiB
            yield bytes(256 * 1024)
            sent[0] += 1

    call = asyncio.create_task(client.invoke("sink", upload()))
    async with asyncio.timeout(10):
        await started.wait()
        last = -1
        while sent[0] != last:  # until the upload is held back
            last = sent[0]
            await asyncio.sleep(0.3)
    assert sent[0] < 64
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    link: Any = connections[0].links[CONNECTED_KEY]  # type: ignore[attr-defined]
    async with asyncio.timeout(10):
        await cancelled.wait()
        while link.unacked() > 64 * 1024:  # the reset is acknowledged: nothing held
            await asyncio.sleep(0.05)
    replies = await asyncio.gather(*(client.invoke("echo", i, order_key="k") for i in range(20)))
    assert replies == list(range(20))
    assert len(connections) == 1
    assert client.statistics().reconnects == 0
    assert server.statistics().dropped_messages == 0  # the reset broke no barrier
