"""Link events: ``peer.events()`` and event listeners, over real sockets on both transports."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import callosum_like as cl
from callosum_like.events import EventHub

from .conftest import PairFactory, bind_address, connect_address
from .rawpeer import RawClient

pytestmark = pytest.mark.timeout(30)
FAST_HEARTBEAT = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}
CONNECTED = cl.PeerEventKind.CONNECTED
DISCONNECTED = cl.PeerEventKind.DISCONNECTED


async def next_event(events: cl.PeerEvents) -> cl.PeerEvent:
    async with asyncio.timeout(10):
        return await anext(events)


@pytest.mark.asyncio
async def test_bound_side_sees_each_client_connect_and_leave(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="server")
    )
    seen: list[cl.PeerEvent] = []
    server.add_event_listener(seen.append)
    async with server.events() as events:
        async with cl.Peer(connect=connect_address(server), identity="agent-1"):
            assert await next_event(events) == cl.PeerEvent(CONNECTED, "agent-1")
        event = await next_event(events)
    assert (event.kind, event.identity) == (DISCONNECTED, "agent-1")
    assert "closed" in event.reason
    assert [e.kind for e in seen] == [CONNECTED, DISCONNECTED]


@pytest.mark.asyncio
async def test_connecting_side_sees_the_server(make_pair: PairFactory) -> None:
    events_seen: list[cl.PeerEvent] = []
    server, client = await make_pair()
    # The handshake is done by the time __aenter__ returns; a listener added later sees the
    # end of the link.
    client.add_event_listener(events_seen.append)
    await server.aclose()
    async with asyncio.timeout(10):
        while not events_seen:
            await asyncio.sleep(0.01)
    assert events_seen[0].kind is DISCONNECTED
    assert events_seen[0].identity == "server"


@pytest.mark.asyncio
async def test_heartbeat_loss_is_an_event(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="server", **FAST_HEARTBEAT)
    )
    async with server.events() as events:
        raw = await RawClient.connect(server, transport_kind)  # says Hello, then nothing
        try:
            await raw.handshake("agent-1")
            assert await next_event(events) == cl.PeerEvent(cl.PeerEventKind.CONNECTED, "agent-1")
            event = await next_event(events)
        finally:
            await raw.aclose()
    assert (event.kind, event.identity, event.reason) == (DISCONNECTED, "agent-1", "heartbeat lost")


@pytest.mark.asyncio
async def test_iteration_ends_when_the_peer_closes(transport_kind: str) -> None:
    server = cl.Peer(bind=bind_address(transport_kind))
    async with server:
        events = server.events()
    assert [e async for e in events] == []


@pytest.mark.asyncio
async def test_a_slow_consumer_loses_the_oldest_events_not_memory() -> None:
    hub = EventHub()
    events = hub.subscribe(maxsize=3)
    for number in range(10):
        hub.emit(cl.PeerEvent(CONNECTED, f"agent-{number}"))
    assert events.dropped == 7
    assert [(await anext(events)).identity for _ in range(3)] == ["agent-7", "agent-8", "agent-9"]
    await events.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(events)


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    hub = EventHub()
    seen: list[str] = []

    def broken(event: cl.PeerEvent) -> None:
        raise RuntimeError("listener bug")

    hub.add(broken)
    hub.add(lambda event: seen.append(event.identity))
    hub.emit(cl.PeerEvent(CONNECTED, "agent-1"))
    assert seen == ["agent-1"]
    assert "listener bug" in caplog.text
    hub.remove(broken)
    with pytest.raises(KeyError):
        hub.remove(broken)


def test_listener_misuse() -> None:
    peer = cl.Peer(bind="tcp://127.0.0.1:0")
    with pytest.raises(TypeError, match="callable"):
        peer.add_event_listener("not a function")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize"):
        peer.events(maxsize=0)
