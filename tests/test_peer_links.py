"""Several links per identity: concurrent connections of one principal are all served.

The model (docs/guide.md, "One identity, several links"): every connection is a link of its
own; ``peers`` lists an identity once; ``to=identity`` takes its most recently opened link; a
reply goes back on the link its request came on; only a Hello with the reconnect token of an
open link of the same identity replaces that link. Both transports, real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import Any

import pytest

import callosum_like as cl
from callosum_like import auth
from callosum_like.remotes import MAX_HANDSHAKES, MAX_TOKEN_LENGTH, REPLACED
from callosum_like.wire import messages as m
from callosum_like.wire.codec import pack_body

from .conftest import PROXY_TRANSPORTS, bind_address, connect_address, open_relay, until
from .netproxy import Proxy
from .rawpeer import MAX, RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

CONNECTED, DISCONNECTED = cl.PeerEventKind.CONNECTED, cl.PeerEventKind.DISCONNECTED


async def double(request: cl.Request) -> Any:
    return request.body * 2


async def next_event(events: cl.PeerEvents, within: float = 10.0) -> cl.PeerEvent:
    async with asyncio.timeout(within):
        return await anext(events)


class Gathering:
    """A handler that returns only once ``size`` calls are inside it at once (whoever made
    them: here they all come from one identity), proving the links were all open together."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.inside = 0
        self.complete = asyncio.Event()

    async def __call__(self, request: cl.Request) -> Any:
        self.inside += 1
        if self.inside >= self.size:
            self.complete.set()
        await asyncio.wait_for(self.complete.wait(), 20)
        return request.body


def labelled(label: str) -> Any:
    async def who(request: cl.Request) -> Any:
        return label

    return who


async def test_concurrent_links_of_one_identity_are_all_served(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await bound(peers, transport_kind)
    meeting = Gathering(3)
    server.handle_function("echo", meeting)
    clients: dict[str, cl.Peer] = {}
    serials: dict[str, int] = {}
    async with server.events() as events:
        for number, label in enumerate(["first", "second", "third"], 1):
            client = cl.Peer(connect=connect_address(server), identity="agent-1")
            clients[label] = await peers.enter_async_context(client)
            client.handle_function("who", labelled(label))
            event = await next_event(events)
            assert (event.kind, event.identity, event.links) == (CONNECTED, "agent-1", number)
            serials[label] = event.link
        assert len(set(serials.values())) == 3
        assert server.peers == {"agent-1"}
        assert server.statistics().connected_peers == 1
        # The newest link takes calls to the identity.
        assert await server.invoke("who", to="agent-1") == "third"
        # Three calls at once, one per link, each with the same call id (every link counts
        # its own): each reply goes back on the link its request came on.
        replies = await asyncio.gather(
            *(client.invoke("echo", label) for label, client in clients.items())
        )
        assert replies == ["first", "second", "third"]
        assert meeting.complete.is_set()
        # The newest leaves: the next newest takes over; the identity is still connected.
        await clients["third"].aclose()
        event = await next_event(events)
        assert (event.kind, event.identity, event.link, event.links) == (
            DISCONNECTED,
            "agent-1",
            serials["third"],
            2,
        )
        assert server.peers == {"agent-1"}
        assert await server.invoke("who", to="agent-1") == "second"
        # An older one leaves: the newest stays the one called.
        await clients["first"].aclose()
        event = await next_event(events)
        assert (event.kind, event.link, event.links) == (DISCONNECTED, serials["first"], 1)
        assert await server.invoke("who", to="agent-1") == "second"
        await clients["second"].aclose()
        event = await next_event(events)
        assert (event.kind, event.link, event.links) == (DISCONNECTED, serials["second"], 0)
        assert server.peers == frozenset()
    with pytest.raises(cl.UnknownPeerError):
        await server.invoke("who", to="agent-1")


async def test_a_peer_per_call_with_one_identity_works_forty_at_once(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    """The shape of a manager that opens a Peer for each call, all under one name."""
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="agent")
    )
    server.handle_function("double", double)
    address = connect_address(server)

    async def one_call(number: int) -> Any:
        async with asyncio.timeout(20), cl.Peer(connect=address, identity="manager") as peer:
            return await peer.invoke("double", number)

    results = await asyncio.gather(*(one_call(n) for n in range(40)))
    assert results == [2 * n for n in range(40)]
    assert server.statistics().errors == {}


async def test_curve_connections_of_one_principal_are_all_served(
    peers: contextlib.AsyncExitStack,
) -> None:
    """Under CURVE every connection of one key has the same identity; none replaces another."""
    server_keys, client_keys = auth.generate_keypair(), auth.generate_keypair()
    server = await peers.enter_async_context(
        cl.Peer(
            bind="tcp://127.0.0.1:0",
            identity="agent",
            authenticator=auth.ServerAuthenticator(
                server_keys, allowed={client_keys.public: "manager"}
            ),
        )
    )
    server.handle_function("double", double)
    meeting = Gathering(20)
    server.handle_function("meet", meeting)

    async def one_call(number: int) -> Any:
        client_auth = auth.ClientAuthenticator(client_keys, server_public_key=server_keys.public)
        async with (
            asyncio.timeout(30),
            cl.Peer(connect=server.address, authenticator=client_auth) as peer,
        ):
            assert peer.identity == "manager"
            await peer.invoke("meet")  # all twenty links are open at once here
            return await peer.invoke("double", number)

    results = await asyncio.gather(*(one_call(n) for n in range(20)))
    assert results == [2 * n for n in range(20)]
    assert meeting.complete.is_set()


# -- the reconnect token --------------------------------------------------------------------


async def bound(peers: contextlib.AsyncExitStack, kind: str, **options: Any) -> cl.Peer:
    return await peers.enter_async_context(
        cl.Peer(bind=bind_address(kind), identity="server", **options)
    )


async def raw_hello(
    server: cl.Peer, kind: str, identity: str, token: str | None
) -> tuple[RawClient, m.Message]:
    raw = await RawClient.connect(server, kind)
    await raw.send(m.Hello(identity=identity, max_body_size=MAX, token=token))
    return raw, await raw.receive()


async def answer_one_call(raw: RawClient, value: Any) -> m.Call:
    call = await raw.receive()
    assert isinstance(call, m.Call)
    await raw.send(m.Result(id=call.id, body=pack_body(value)))
    return call


async def test_a_hello_with_the_token_of_an_open_link_replaces_that_link(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await bound(peers, transport_kind)
    token = "a1" * 16
    old, welcome = await raw_hello(server, transport_kind, "agent-1", token)
    assert isinstance(welcome, m.Welcome)
    other, welcome = await raw_hello(server, transport_kind, "agent-1", "b2" * 16)
    assert isinstance(welcome, m.Welcome)
    try:
        async with server.events() as events:
            new, welcome = await raw_hello(server, transport_kind, "agent-1", token)
            assert isinstance(welcome, m.Welcome)
            try:
                assert await old.receive() == m.Goodbye(reason=REPLACED)
                assert (await next_event(events)).kind is CONNECTED
                event = await next_event(events)
                assert (event.kind, event.reason, event.links) == (DISCONNECTED, REPLACED, 2)
                assert server.peers == {"agent-1"}
                # The replacement is the newest link; the link with another token stays.
                call = asyncio.create_task(server.invoke("who", to="agent-1"))
                await answer_one_call(new, "new")
                assert await call == "new"
                await new.send(m.Goodbye(reason="closing"))  # a ZeroMQ server sees no close
                event = await next_event(events)
                assert (event.kind, event.links) == (DISCONNECTED, 1)
                call = asyncio.create_task(server.invoke("who", to="agent-1"))
                await answer_one_call(other, "other")
                assert await call == "other"
            finally:
                await new.aclose()
    finally:
        await old.aclose()
        await other.aclose()


async def test_the_token_of_another_identity_is_refused_and_drops_nobody(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await bound(peers, transport_kind)
    token = "c3" * 16
    owner, welcome = await raw_hello(server, transport_kind, "agent-1", token)
    assert isinstance(welcome, m.Welcome)
    thief, answer = await raw_hello(server, transport_kind, "intruder", token)
    try:
        assert isinstance(answer, m.Goodbye)
        assert "reconnect token of another identity" in answer.reason
        assert server.peers == {"agent-1"}
        assert server.statistics().links_refused == 1
        call = asyncio.create_task(server.invoke("who", to="agent-1"))
        await answer_one_call(owner, "owner")
        assert await call == "owner"
    finally:
        await owner.aclose()
        await thief.aclose()


@pytest.mark.parametrize("token", ["", "x" * (MAX_TOKEN_LENGTH + 1)], ids=["empty", "long"])
async def test_a_malformed_token_is_refused(
    transport_kind: str, peers: contextlib.AsyncExitStack, token: str
) -> None:
    server = await bound(peers, transport_kind)
    raw, answer = await raw_hello(server, transport_kind, "agent-1", token)
    try:
        assert isinstance(answer, m.Goodbye)
        assert "reconnect token" in answer.reason
        assert server.peers == frozenset()
        assert server.statistics().links_refused == 1
    finally:
        await raw.aclose()


@pytest.mark.transports(*PROXY_TRANSPORTS)  # cuts one TCP connection
async def test_a_reconnecting_peer_replaces_only_its_own_dead_link(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await bound(peers, transport_kind, heartbeat_timeout=60)
    other = await peers.enter_async_context(
        cl.Peer(connect=connect_address(server), identity="agent-1")
    )
    other.handle_function("who", labelled("other"))
    async with Proxy.to(server) as proxy, server.events() as events:
        mine = await peers.enter_async_context(
            cl.Peer(connect=proxy.address(transport_kind), identity="agent-1")
        )
        mine.handle_function("who", labelled("mine"))
        event = await next_event(events)
        assert (event.kind, event.links) == (CONNECTED, 2)
        dead = event.link
        # Our side of the connection breaks; the server's side stays open and silent, so
        # the server cannot know. The Peer reconnects, and its Hello's token says who it is.
        proxy.cut(server_side=False)
        event = await next_event(events)
        assert (event.kind, event.links) == (CONNECTED, 3)
        event = await next_event(events)
        assert (event.kind, event.link, event.reason, event.links) == (
            DISCONNECTED,
            dead,
            REPLACED,
            2,
        )
        assert await server.invoke("who", to="agent-1") == "mine"
        assert mine.statistics().reconnects == 1
        await mine.aclose()
        # The other connection of the identity was never touched.
        event = await next_event(events)
        assert (event.kind, event.links) == (DISCONNECTED, 1)
        assert await server.invoke("who", to="agent-1") == "other"
        assert other.statistics().reconnects == 0


# -- bad input at fleet scale ---------------------------------------------------------------


@contextlib.contextmanager
def file_limit(needed: int) -> Any:
    """Raise this process's soft limit of open files to ``needed`` for the block."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_flood_of_half_open_connections_is_bounded_and_counted(
    peers: contextlib.AsyncExitStack,
) -> None:
    """Connections that never say Hello: the oldest are pushed out past MAX_HANDSHAKES."""
    extra = 5
    count = MAX_HANDSHAKES + extra
    with file_limit(2 * count + 500):
        server = await bound(peers, "tcp")
        honest = await peers.enter_async_context(
            cl.Peer(connect=connect_address(server), identity="honest")
        )
        honest.handle_function("double", double)
        host, port = server.address.rsplit(":", 1)
        flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(count):
                flood.append(await asyncio.open_connection(host, int(port)))
            await until(
                lambda: server.statistics().links_refused == extra,
                lambda: f"links_refused is {server.statistics().links_refused}",
                timeout=30,
            )
            # The oldest were told why and cut off; the newest are still held.
            async with asyncio.timeout(10):
                cut_off = await flood[0][0].read()
            assert b"without a Hello" in cut_off
            assert not flood[-1][0].at_eof()
            # Nobody else lost anything, and a newcomer still gets in.
            assert server.peers == {"honest"}
            assert await server.invoke("double", 21, to="honest") == 42
            async with cl.Peer(connect=connect_address(server), identity="late") as late:
                late.handle_function("double", double)
                assert await server.invoke("double", 2, to="late") == 4
        finally:
            for _, writer in flood:
                writer.close()


async def test_a_link_that_never_says_hello_is_dropped_after_heartbeat_timeout(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await bound(peers, transport_kind, heartbeat_interval=0.1, heartbeat_timeout=0.5)
    raw = await RawClient.connect(server, transport_kind)
    try:
        # A ZeroMQ bound side learns of a remote from its first message: send one that is
        # not a Hello (it is dropped, and the link waits for its Hello).
        await raw.send(m.Ping())
        answer = await raw.receive(timeout=10)
        assert isinstance(answer, m.Goodbye)
        assert "no Hello within 0.5 s" in answer.reason
        assert server.statistics().links_refused == 1
    finally:
        await raw.aclose()


async def test_ten_thousand_names_from_one_relay_are_held_and_the_excess_logged_once(
    transport_kind: str,
    peers: contextlib.AsyncExitStack,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("callosum_like.routing.MAX_ANNOUNCED_PEERS", 8_000)
    server = await bound(peers, transport_kind)
    agent = await peers.enter_async_context(
        cl.Peer(connect=connect_address(server), identity="agent")
    )
    agent.handle_function("double", double)
    relay, welcome = await raw_hello(server, transport_kind, "relay", None)
    assert isinstance(welcome, m.Welcome)
    try:
        with caplog.at_level(logging.WARNING, logger="callosum_like"):
            for number in range(10_000):
                await relay.send(m.PeerUp(peer=f"agent-{number}"))
            await relay.send(m.Ping())
            assert isinstance(await relay.receive(timeout=30), m.Pong)
        assert len(server.peers) == 2 + 8_000
        assert server.statistics().dropped_messages == 2_000
        refusals = [r for r in caplog.records if "refused a PeerUp" in r.getMessage()]
        assert len(refusals) == 1
        assert await server.invoke("double", 4, to="agent") == 8
    finally:
        await relay.aclose()


async def test_several_links_of_one_identity_behind_a_relay_are_one_name_above(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    manager = await bound(peers, transport_kind)
    relay = await open_relay(peers, transport_kind, connect_address(manager), "cluster")
    async with manager.events() as events:
        first = await peers.enter_async_context(
            cl.Peer(connect=connect_address(relay), identity="agent-1")  # type: ignore[arg-type]
        )
        first.handle_function("who", labelled("first"))
        while (await next_event(events)).identity != "cluster/agent-1":
            pass
        second = cl.Peer(connect=connect_address(relay), identity="agent-1")  # type: ignore[arg-type]
        await peers.enter_async_context(second)
        second.handle_function("who", labelled("second"))
        async with asyncio.timeout(10):
            while await relay_serves(manager, "second") is False:
                await asyncio.sleep(0.01)
        # The newer one leaves: the name stays, and calls reach the older one.
        await second.aclose()
        async with asyncio.timeout(10):
            while await relay_serves(manager, "first") is False:
                await asyncio.sleep(0.01)
        assert "cluster/agent-1" in manager.peers
        await first.aclose()
        event = await next_event(events)
        assert (event.kind, event.identity) == (DISCONNECTED, "cluster/agent-1")
    assert manager.peers == {"cluster"}


async def relay_serves(manager: cl.Peer, label: str) -> bool:
    """Whether a call to ``cluster/agent-1`` reaches the agent labelled ``label`` now."""
    return await manager.invoke("who", to="cluster/agent-1", timeout=5) == label
