"""A bound Peer and the names a relay announces, with the relay played by hand (RawClient)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgpack
import pytest

import callosum_like as cl
from callosum_like.errors import ErrorCode
from callosum_like.wire import messages as m
from callosum_like.wire.codec import pack_body, unpack_body

from .conftest import Meeting, bind_address, connect_address
from .rawpeer import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]
CONNECTED = cl.PeerEventKind.CONNECTED
DISCONNECTED = cl.PeerEventKind.DISCONNECTED


@contextlib.asynccontextmanager
async def server_and_relay(kind: str, **server_kwargs: Any) -> Any:
    async with cl.Peer(bind=bind_address(kind), identity="manager", **server_kwargs) as server:
        relay = await RawClient.connect(server, kind)
        try:
            await relay.handshake("cluster-b")
            yield server, relay
        finally:
            await relay.aclose()


async def wait_until(condition: Any) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def test_announced_names_are_scoped_listed_and_evented(transport_kind: str) -> None:
    async with server_and_relay(transport_kind) as (server, relay):
        seen: list[cl.PeerEvent] = []
        server.add_event_listener(seen.append)
        waiter = asyncio.create_task(server.wait_for_peer("cluster-b/agent-3", timeout=10))
        await relay.send(m.PeerUp(peer="agent-3"))
        await relay.send(m.PeerUp(peer="cluster-c/agent-1"))  # cannot leave its subtree
        await relay.send(m.PeerUp(peer="agent-3"))  # again: no second event
        await waiter
        await wait_until(lambda: len(server.peers) == 3)
        assert server.peers == {"cluster-b", "cluster-b/agent-3", "cluster-b/cluster-c/agent-1"}
        assert server.statistics().connected_peers == 3
        await relay.send(m.PeerDown(peer="agent-3", reason="heartbeat lost"))
        await wait_until(lambda: "cluster-b/agent-3" not in server.peers)
        assert seen == [
            cl.PeerEvent(CONNECTED, "cluster-b/agent-3"),
            cl.PeerEvent(CONNECTED, "cluster-b/cluster-c/agent-1"),
            cl.PeerEvent(DISCONNECTED, "cluster-b/agent-3", "heartbeat lost"),
        ]
        with pytest.raises(cl.UnknownPeerError):
            await server.invoke("m", to="cluster-c/agent-1")
        with pytest.raises(cl.UnknownPeerError):  # a relay and its peers: to=None is ambiguous
            await server.invoke("m")


async def test_calls_to_an_announced_name_carry_the_target(transport_kind: str) -> None:
    async with server_and_relay(transport_kind) as (server, relay):
        await relay.send(m.PeerUp(peer="sub/agent-1"))
        await server.wait_for_peer("cluster-b/sub/agent-1", timeout=10)
        call = asyncio.create_task(server.invoke("echo", [1], to="cluster-b/sub/agent-1"))
        msg = await relay.receive()
        assert isinstance(msg, m.Call)
        assert (msg.method, msg.target, msg.origin) == ("echo", "sub/agent-1", None)
        await relay.send(m.Result(id=msg.id, body=msg.body))
        assert await call == [1]
        plain = asyncio.create_task(server.invoke("echo", 2, to="cluster-b"))
        msg = await relay.receive()
        assert isinstance(msg, m.Call)
        assert msg.target is None
        await relay.send(m.Error(id=msg.id, code=ErrorCode.PEER_DISCONNECTED, message="gone"))
        with pytest.raises(cl.PeerDisconnectedError, match="gone"):
            await plain


async def test_calls_from_behind_a_relay_name_their_origin(transport_kind: str) -> None:
    async with server_and_relay(transport_kind) as (server, relay):

        async def whoami(request: cl.Request) -> Any:
            return request.peer_id

        server.handle_function("whoami", whoami)
        await relay.send(m.Call(id=1, method="whoami", origin="sub/agent-1"))
        await relay.send(m.Call(id=2, method="whoami"))
        replies = {(msg := await relay.receive()).id: msg for _ in range(2)}
        assert unpack_body(replies[1].body) == "cluster-b/sub/agent-1"  # type: ignore[union-attr]
        assert unpack_body(replies[2].body) == "cluster-b"  # type: ignore[union-attr]


async def test_order_keys_are_scoped_per_origin(transport_kind: str) -> None:
    async with server_and_relay(transport_kind, ordering=cl.Ordering.SERIALIZED) as (
        server,
        relay,
    ):
        server.handle_function("hold", Meeting())
        for call_id, origin in ((1, "agent-1"), (2, "agent-2")):
            await relay.send(m.Call(id=call_id, method="hold", order_key="k", origin=origin))
        # Equal keys from two callers behind the relay do not wait for each other.
        replies = [await relay.receive() for _ in range(2)]
        assert {type(r) for r in replies} == {m.Result}


async def test_a_target_this_peer_cannot_reach_is_answered_disconnected(
    transport_kind: str,
) -> None:
    async with server_and_relay(transport_kind) as (_, relay):
        await relay.send(m.Call(id=5, method="echo", target="nobody"))
        reply = await relay.receive()
        assert isinstance(reply, m.Error)
        assert reply.id == 5
        assert reply.code == ErrorCode.PEER_DISCONNECTED
        assert "manager/nobody" in reply.message


async def test_a_relay_leaving_takes_its_names_with_it(transport_kind: str) -> None:
    async with cl.Peer(bind=bind_address(transport_kind), identity="manager") as server:
        seen: list[cl.PeerEvent] = []
        server.add_event_listener(seen.append)
        relay = await RawClient.connect(server, transport_kind)
        await relay.handshake("cluster-b")
        await relay.send(m.PeerUp(peer="agent-1"))
        await server.wait_for_peer("cluster-b/agent-1", timeout=10)
        await relay.send(m.Goodbye(reason="closing"))
        await wait_until(lambda: not server.peers)
        await relay.aclose()
        assert [(e.kind, e.identity) for e in seen] == [
            (CONNECTED, "cluster-b"),
            (CONNECTED, "cluster-b/agent-1"),
            (DISCONNECTED, "cluster-b/agent-1"),
            (DISCONNECTED, "cluster-b"),
        ]


@pytest.mark.parametrize(
    "header",
    [
        [1, 20, 0, ""],  # empty route
        [1, 20, 0, "a//b"],
        [1, 20, 0, "/"],
        [1, 20, 0, "x" * 2000],
        [1, 20, 0, b"agent"],
        [1, 20, 0],
        [1, 21, 0, "a", "why", "extra"],
        [1, 3, 0, 1, "echo", None, None, None, False, "a/"],  # a Call with a bad target
        [1, 3, 0, 1, "echo", None, None, None, False, None, 7],  # ... with a bad origin
    ],
    ids=repr,
)
async def test_malformed_announcements_and_routes_are_dropped_and_counted(
    transport_kind: str, header: list[Any]
) -> None:
    async with server_and_relay(transport_kind) as (server, relay):

        async def echo(request: cl.Request) -> Any:
            return request.body

        server.handle_function("echo", echo)
        frames = [msgpack.packb(header)]
        if header[1] == 3:
            frames.append(pack_body(None))
        await relay.send_frames(frames)
        await relay.send(m.Call(id=9, method="echo", body=pack_body("still here")))
        reply = await relay.receive()
        assert isinstance(reply, m.Result)
        assert reply.id == 9
        assert server.peers == {"cluster-b"}
        assert server.statistics().dropped_messages == 1


async def test_too_many_announcements_are_dropped(
    transport_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("callosum_like.routing.MAX_ANNOUNCED_PEERS", 3)
    async with server_and_relay(transport_kind) as (server, relay):
        for i in range(5):
            await relay.send(m.PeerUp(peer=f"agent-{i}"))
        await relay.send(m.Ping())
        assert isinstance(await relay.receive(), m.Pong)
        assert len(server.peers) == 1 + 3
        assert server.statistics().dropped_messages == 2


async def test_announcements_to_a_connecting_peer_are_dropped(transport_kind: str) -> None:
    async with (
        cl.Peer(bind=bind_address(transport_kind), identity="manager") as server,
        cl.Peer(connect=connect_address(server), identity="agent") as client,
    ):
        # Only relays announce names: send a PeerUp on the link as a relay's forwarder would.
        link, _ = server.lookup("agent") or pytest.fail("agent is not connected")
        await link.send(m.PeerUp(peer="x"))
        await link.send(m.Ping())
        await wait_until(lambda: client.statistics().dropped_messages == 1)
        assert client.peers == {"manager"}


async def test_an_identity_with_a_slash_is_refused(transport_kind: str) -> None:
    async with cl.Peer(bind=bind_address(transport_kind), identity="manager") as server:
        with pytest.raises(cl.PeerDisconnectedError, match="contains '/'"):
            async with cl.Peer(connect=connect_address(server), identity="cluster-b/agent-3"):
                pass
        assert server.peers == frozenset()
        assert server.statistics().dropped_messages == 1
