"""A Peer whose transport fails under it fails its calls, says why, and counts them.

The transport here is the real TCP transport, wrapped so that the test can make its
``receive()`` raise: the one fault a real socket cannot be made to produce on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.lower.base import Connection, Frame, Transport, TransportEvent
from callosum_like.lower.tcp import TCPTransport

from .conftest import bind_address, connect_address

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


class BreakingConnection(Connection):
    """A real connection whose ``receive()`` raises once ``broken`` is set."""

    def __init__(self, inner: Connection) -> None:
        self._inner = inner
        self.bound = inner.bound
        self.reconnects = inner.reconnects
        self.broken = asyncio.Event()
        self.sends_fail = False  # as when the transport knows before the Peer that it broke

    @property
    def local_address(self) -> str:
        return self._inner.local_address

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        if self.sends_fail:
            raise cl.PeerDisconnectedError("the connection broke (injected by the test)")
        await self._inner.send(frames, to=to)

    async def receive(self) -> TransportEvent:
        receiving = asyncio.ensure_future(self._inner.receive())
        breaking = asyncio.ensure_future(self.broken.wait())
        try:
            await asyncio.wait({receiving, breaking}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            breaking.cancel()
            if not receiving.done():
                receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await breaking
        if receiving.done() and not receiving.cancelled():
            return receiving.result()
        raise RuntimeError("the transport broke (injected by the test)")

    async def disconnect(self, peer: bytes) -> None:
        await self._inner.disconnect(peer)

    async def aclose(self) -> None:
        await self._inner.aclose()


class BreakingTransport(Transport):
    """The TCP transport, each connection wrapped in a ``BreakingConnection``."""

    def __init__(self) -> None:
        self._inner = TCPTransport()
        self.connections: list[BreakingConnection] = []

    async def bind(self, address: Any, **kwargs: Any) -> Connection:
        return self._wrap(await self._inner.bind(address, **kwargs))

    async def connect(self, address: Any, **kwargs: Any) -> Connection:
        return self._wrap(await self._inner.connect(address, **kwargs))

    def _wrap(self, connection: Connection) -> BreakingConnection:
        wrapped = BreakingConnection(connection)
        self.connections.append(wrapped)
        return wrapped


def hanging_handler() -> tuple[asyncio.Event, Callable[[cl.Request], Awaitable[None]]]:
    """A handler that never returns, and the event it sets once it started."""
    started = asyncio.Event()

    async def hang(request: cl.Request) -> None:
        started.set()
        await asyncio.Event().wait()

    return started, hang


async def break_and_expect_the_call_failed(
    breaking: BreakingTransport, call: asyncio.Task[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Break the peer's receiving; its pending ``call`` fails, and the reason is logged."""
    with caplog.at_level(logging.ERROR, logger="callosum_like.peer"):
        breaking.connections[0].broken.set()
        with pytest.raises(cl.PeerDisconnectedError, match="stopped receiving"):
            await call
    assert "the transport broke" in caplog.text


async def test_a_connecting_peer_that_stops_receiving_fails_its_pending_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, hang = hanging_handler()
    breaking = BreakingTransport()
    async with cl.Peer(bind=bind_address("tcp"), identity="server") as server:
        server.handle_function("hang", hang)
        async with cl.Peer(
            connect=connect_address(server), transport=breaking, identity="agent-1"
        ) as client:
            call = asyncio.create_task(client.invoke("hang"))
            await started.wait()
            await break_and_expect_the_call_failed(breaking, call, caplog)
            assert client.statistics().errors == {"PeerDisconnectedError": 1}
            assert client.peers == frozenset()
            with pytest.raises(cl.PeerDisconnectedError):
                await client.invoke("hang")


async def test_a_bound_peer_that_stops_receiving_fails_its_calls_to_every_remote(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, hang = hanging_handler()
    breaking = BreakingTransport()
    async with contextlib.AsyncExitStack() as stack:
        bound = cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), transport=breaking)
        server = await stack.enter_async_context(bound)
        connecting = cl.Peer(connect=connect_address(server), identity="agent-1")
        client = await stack.enter_async_context(connecting)
        client.handle_function("hang", hang)
        await server.wait_for_peer("agent-1", timeout=10)
        call = asyncio.create_task(server.invoke("hang", to="agent-1"))
        await started.wait()
        await break_and_expect_the_call_failed(breaking, call, caplog)
        assert server.peers == frozenset()


@pytest.mark.parametrize("kind", ["invoke", "stream"])
async def test_a_send_that_finds_the_link_gone_fails_and_counts_the_call(kind: str) -> None:
    async def numbers(request: cl.Request):  # type: ignore[no-untyped-def]
        yield 1

    breaking = BreakingTransport()
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(cl.Peer(bind=bind_address("tcp")))
        server.handle_function("numbers", numbers)
        connecting = cl.Peer(connect=connect_address(server), transport=breaking)
        client = await stack.enter_async_context(connecting)
        assert [n async for n in client.stream("numbers")] == [1]
        breaking.connections[0].sends_fail = True
        with pytest.raises(cl.PeerDisconnectedError, match="injected"):
            if kind == "invoke":
                await client.invoke("numbers")
            else:
                async for _ in client.stream("numbers"):
                    pass
        assert client.statistics().errors == {"PeerDisconnectedError": 1}
        assert client.statistics().calls_in_flight == 0
