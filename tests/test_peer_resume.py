"""Session resumption over real sockets: calls survive a broken connection, once each.

Both transports, through a proxy on 127.0.0.1 that the tests cut (``tests/netproxy.py``);
tests/net/ runs the same over network namespaces with real link flaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

import callosum_like as cl
from callosum_like import auth
from callosum_like.addresses import ZeroMQAddress
from callosum_like.lower.zeromq import ZeroMQTransport
from callosum_like.replay import Replay
from callosum_like.wire import messages as m
from callosum_like.wire.codec import encode

from .conftest import PROXY_TRANSPORTS, Blocker, bind_address, open_relay, until
from .netproxy import Proxy
from .rawpeer import MAX, RawClient
from .relayproc import Children, address_of, port_of

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

RESUME = {"resume_timeout": 10.0, "heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}

Stack = contextlib.AsyncExitStack


class Counted:
    """A handler that counts its runs and finishes only once ``release`` is set."""

    def __init__(self) -> None:
        self.runs: list[Any] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: cl.Request) -> Any:
        self.runs.append(request.body)
        self.started.set()
        await self.release.wait()
        return request.body


async def pair(stack: Stack, kind: str, **options: Any) -> tuple[cl.Peer, cl.Peer, Proxy]:
    """A server and a client that reaches it through a proxy, both resumable."""
    options = {**RESUME, **options}
    server = await stack.enter_async_context(
        cl.Peer(bind=bind_address(kind), identity="server", **options)
    )
    proxy = await stack.enter_async_context(Proxy.to(server))
    client = await stack.enter_async_context(
        cl.Peer(connect=proxy.address(kind), identity="agent-1", **options)
    )
    return server, client, proxy


async def resumed(*peers: cl.Peer, count: int = 1) -> None:
    for peer in peers:
        await until(
            lambda peer=peer: peer.statistics().sessions_resumed >= count,  # type: ignore[misc]
            lambda peer=peer: f"{peer!r}: {peer.statistics()}",  # type: ignore[misc]
            timeout=20,
        )


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_a_call_in_flight_completes_across_a_break_and_runs_once(
    transport_kind: str, peers: Stack
) -> None:
    server, client, proxy = await pair(peers, transport_kind)
    handler = Counted()
    server.handle_function("work", handler)
    call = asyncio.create_task(client.invoke("work", "job-1"))
    async with asyncio.timeout(10):
        await handler.started.wait()
    assert proxy.cut() == 1
    await resumed(server, client)
    handler.release.set()
    assert await asyncio.wait_for(call, 10) == "job-1"
    assert handler.runs == ["job-1"]
    assert client.statistics().disconnects == 0  # nobody saw the link end
    assert client.peers == {"server"}
    assert server.peers == {"agent-1"}


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_calls_made_while_the_link_is_down_go_out_when_it_is_back(
    transport_kind: str, peers: Stack
) -> None:
    server, client, proxy = await pair(peers, transport_kind)
    server.handle_function("double", lambda request: asyncio.sleep(0, request.body * 2))
    client.handle_function("triple", lambda request: asyncio.sleep(0, request.body * 3))
    assert await client.invoke("double", 1) == 2
    proxy.blocked = True
    proxy.cut()
    # Both sides take calls meanwhile; they wait for the resumption, not fail.
    up = [asyncio.create_task(client.invoke("double", n)) for n in range(20)]
    down = [asyncio.create_task(server.invoke("triple", n, to="agent-1")) for n in range(20)]
    await asyncio.sleep(0)  # they are sent (kept) before the link comes back
    proxy.blocked = False
    await resumed(server, client)
    assert await asyncio.gather(*up) == [2 * n for n in range(20)]
    assert await asyncio.gather(*down) == [3 * n for n in range(20)]


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_streams_and_large_bodies_carry_on_in_both_directions(
    transport_kind: str, peers: Stack
) -> None:
    server, client, proxy = await pair(peers, transport_kind, chunk_size=64 * 1024)
    halfway = asyncio.Event()
    cut_done = asyncio.Event()

    async def count(request: cl.Request) -> AsyncIterator[int]:
        for number in range(200):
            if number == 100:
                halfway.set()
                await cut_done.wait()
            yield number

    async def sizes(request: cl.Request) -> Any:
        items = [len(item) async for item in request.body]
        return items

    server.handle_function("count", count)
    server.handle_function("echo", lambda request: asyncio.sleep(0, request.body))
    server.handle_function("sizes", sizes)

    async def upload() -> AsyncIterator[bytes]:
        for number in range(40):
            if number == 20:
                await cut_done.wait()
            yield bytes([number]) * 100_000

    big = bytes(range(256)) * (16 * 1024)  # 4 MiB, in chunks of 64-256 KiB
    items: list[int] = []

    async def consume() -> None:
        async for item in client.stream("count"):
            items.append(item)

    streaming = asyncio.create_task(consume())
    echoing = asyncio.create_task(client.invoke("echo", big))
    uploading = asyncio.create_task(client.invoke("sizes", upload()))
    async with asyncio.timeout(10):
        await halfway.wait()
    proxy.cut()
    cut_done.set()
    await resumed(server, client)
    async with asyncio.timeout(30):
        await streaming
        assert await echoing == big
        assert await uploading == [100_000] * 40
    assert items == list(range(200))


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_a_break_longer_than_resume_timeout_fails_exactly_the_pending_calls(
    transport_kind: str, peers: Stack
) -> None:
    resume_timeout = 1.0
    server, client, proxy = await pair(peers, transport_kind, resume_timeout=resume_timeout)
    handler = Counted()
    server.handle_function("work", handler)
    server.handle_function("double", lambda request: asyncio.sleep(0, request.body * 2))
    call = asyncio.create_task(client.invoke("work", 1))
    async with asyncio.timeout(10):
        await handler.started.wait()
    proxy.blocked = True
    proxy.cut()
    loop = asyncio.get_running_loop()
    cut_at = loop.time()
    with pytest.raises(cl.PeerDisconnectedError, match="not resumed within"):
        await asyncio.wait_for(call, 20)
    # The contract's bound: resume_timeout + heartbeat_timeout (and two heartbeat ticks).
    assert loop.time() - cut_at <= resume_timeout + RESUME["heartbeat_timeout"] + 1.0
    proxy.blocked = False
    await client.wait_for_peer("server", timeout=20)  # a new session, not a resumed one
    assert await client.invoke("double", 4) == 8
    assert client.statistics().sessions_resumed == 0


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_only_the_peer_that_opened_a_session_can_resume_it(
    transport_kind: str, peers: Stack
) -> None:
    server, client, _ = await pair(peers, transport_kind)
    server.handle_function("double", lambda request: asyncio.sleep(0, request.body * 2))
    raw = await RawClient.connect(server, transport_kind)
    try:
        # A session id alone grants nothing: neither a guessed one nor, from another
        # identity or without the Peer's token, a real one (which the server never told
        # anybody but its own client).
        for hello in (
            m.Hello(identity="agent-1", max_body_size=MAX, session="guess", received=0),
            m.Hello(identity="agent-1", max_body_size=MAX, session="s" * 32, received=0),
        ):
            await raw.send(hello)
            answer = await raw.receive()
            assert isinstance(answer, m.Goodbye)
            assert "cannot resume an unknown or expired session" in answer.reason
            await raw.aclose()
            raw = await RawClient.connect(server, transport_kind)
        assert server.statistics().resumes_refused == 2
        assert await client.invoke("double", 21) == 42  # the real session is untouched
    finally:
        await raw.aclose()


async def test_a_forged_acknowledgement_costs_only_the_message(
    transport_kind: str, peers: Stack
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="server", **RESUME)
    )
    server.handle_function("double", lambda request: asyncio.sleep(0, request.body * 2))
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.send(m.Hello(identity="raw", max_body_size=MAX, session="r" * 32))
        welcome = await raw.receive()
        assert isinstance(welcome, m.Welcome)
        assert welcome.session == "r" * 32
        dropped = server.statistics().dropped_messages
        await raw.send(m.Ack(seq=999))  # we were sent nothing numbered yet
        await raw.send(m.Ping())
        assert isinstance(await raw.receive(), m.Pong)
        assert server.statistics().dropped_messages == dropped + 1
        # An unnumbered call on a resumable link is refused the same way.
        await raw.send(m.Call(id=1, method="double"))
        await raw.send(m.Ping())
        assert isinstance(await raw.receive(), m.Pong)
        assert server.statistics().dropped_messages == dropped + 2
        assert server.statistics().calls_in == 0
    finally:
        await raw.aclose()


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_what_a_suspended_link_keeps_is_bounded(transport_kind: str, peers: Stack) -> None:
    server, client, proxy = await pair(
        peers, transport_kind, max_unacked_bytes=1 << 20, resume_timeout=30
    )
    server.handle_function("echo", lambda request: asyncio.sleep(0, request.body))
    proxy.blocked = True
    proxy.cut()
    body = os.urandom(250_000)  # under chunk_size, and incompressible: kept whole
    calls = [asyncio.create_task(client.invoke("echo", body)) for _ in range(5)]
    # The fifth body passes the bound: the session ends, and every call fails.
    for call in calls:
        with pytest.raises(cl.PeerDisconnectedError, match="max_unacked_bytes"):
            await asyncio.wait_for(call, 20)


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_without_resume_timeout_nothing_changes(transport_kind: str, peers: Stack) -> None:
    server, client, proxy = await pair(peers, transport_kind, resume_timeout=0)
    handler = Counted()
    server.handle_function("work", handler)
    call = asyncio.create_task(client.invoke("work", 1))
    async with asyncio.timeout(10):
        await handler.started.wait()
    proxy.cut()
    with pytest.raises(cl.PeerDisconnectedError):
        await asyncio.wait_for(call, 20)
    assert client.statistics().sessions_resumed == 0


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
@pytest.mark.parametrize("hop", ["upper", "lower"])
async def test_each_hop_of_a_relay_resumes_on_its_own(
    transport_kind: str, peers: Stack, hop: str
) -> None:
    """manager <- proxy <- relay <- proxy <- agent: a call each way lives through a break."""
    manager = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="manager", **RESUME)
    )
    upper = await peers.enter_async_context(Proxy.to(manager))
    relay = await open_relay(
        peers, transport_kind, upper.address(transport_kind), "cluster", **RESUME
    )
    lower = await peers.enter_async_context(Proxy.to(relay))  # type: ignore[arg-type]
    agent = await peers.enter_async_context(
        cl.Peer(connect=lower.address(transport_kind), identity="agent-1", **RESUME)
    )
    on_agent, on_manager = Counted(), Counted()
    agent.handle_function("work", on_agent)
    manager.handle_function("work", on_manager)
    await manager.wait_for_peer("cluster/agent-1", timeout=10)
    down = asyncio.create_task(manager.invoke("work", "down", to="cluster/agent-1"))
    up = asyncio.create_task(agent.invoke("work", "up"))
    async with asyncio.timeout(10):
        await on_agent.started.wait()
        await on_manager.started.wait()
    (upper if hop == "upper" else lower).cut()
    await resumed(manager if hop == "upper" else agent)
    on_agent.release.set()
    on_manager.release.set()
    assert await asyncio.wait_for(down, 15) == "down"
    assert await asyncio.wait_for(up, 15) == "up"
    assert (on_agent.runs, on_manager.runs) == (["down"], ["up"])


async def test_under_curve_only_the_same_principal_resumes(peers: Stack) -> None:
    """The session id and the reconnect token, even both known, grant nothing to another key."""
    server_keys, owner_keys, other_keys = (auth.generate_keypair() for _ in range(3))
    allowed = {owner_keys.public: "owner", other_keys.public: "other"}
    server = await peers.enter_async_context(
        cl.Peer(
            bind="tcp://127.0.0.1:0",
            authenticator=auth.ServerAuthenticator(server_keys, allowed=allowed),
            **RESUME,
        )
    )

    async def raw_curve(keys: auth.Keypair) -> RawClient:
        client_auth = auth.ClientAuthenticator(keys, server_public_key=server_keys.public)
        conn = await ZeroMQTransport().connect(
            ZeroMQAddress(server.address), max_frame_size=MAX, authenticator=client_auth
        )
        return RawClient(conn)

    owner = await raw_curve(owner_keys)
    other = await raw_curve(other_keys)
    try:
        session, token = "o" * 32, "t" * 32
        await owner.send(m.Hello(identity="x", max_body_size=MAX, token=token, session=session))
        welcome = await owner.receive()
        assert isinstance(welcome, m.Welcome)
        assert (welcome.assigned, welcome.session) == ("owner", session)
        # Whatever it claims, the other key is "other": not the session's principal, with
        # the token (refused as another identity's) or without it.
        for with_token, refusal in ((token, "reconnect token of another identity"), (None, "")):
            await other.send(
                m.Hello(
                    identity="owner",
                    max_body_size=MAX,
                    token=with_token,
                    session=session,
                    received=0,
                )
            )
            answer = await other.receive()
            assert isinstance(answer, m.Goodbye)
            assert (refusal or "cannot resume a session of another peer") in answer.reason
            await other.aclose()
            other = await raw_curve(other_keys)
        stats = server.statistics()
        assert (stats.links_refused, stats.resumes_refused) == (2, 1)
        assert server.peers == {"owner"}
    finally:
        await owner.aclose()
        await other.aclose()


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_a_restarted_server_ends_the_old_session_at_once_not_after_resume_timeout(
    transport_kind: str, peers: Stack
) -> None:
    """A server killed and started again knows nothing of the session: its refusal ends the
    session at once (not after ``resume_timeout``), and the client opens a new one."""
    children = Children()
    try:
        server = {"role": "peer", "identity": "server", "options": RESUME}
        first = await children.start(**server, bind={"kind": transport_kind})
        port = port_of(first.address)
        client = await peers.enter_async_context(
            cl.Peer(
                connect=address_of(first.address),
                identity="agent-1",
                **{**RESUME, "resume_timeout": 600},
            )
        )
        call = asyncio.create_task(client.invoke("block", 1))
        await first.line("started")
        first.kill()
        await children.start(**server, bind={"kind": transport_kind, "port": port})
        with pytest.raises(cl.PeerDisconnectedError, match="cannot resume"):
            await asyncio.wait_for(call, 30)
        await client.wait_for_peer("server", timeout=20)
        assert await client.invoke("echo", 42) == 42
        assert client.statistics().sessions_resumed == 0
    finally:
        await children.reap_all()


@pytest.mark.transports(*PROXY_TRANSPORTS)  # a proxy cuts the socket
async def test_a_cancellation_during_the_break_reaches_the_handler_once_resumed(
    transport_kind: str, peers: Stack
) -> None:
    server, client, proxy = await pair(peers, transport_kind)
    hang = Blocker()
    server.handle_function("hang", hang)
    call = asyncio.create_task(client.invoke("hang"))
    async with asyncio.timeout(10):
        await hang.started.wait()
    proxy.blocked = True
    proxy.cut()
    call.cancel()  # the caller gives up while nothing reaches the server
    with pytest.raises(asyncio.CancelledError):
        await call
    proxy.blocked = False  # the Cancel, kept meanwhile, goes out with the resumption
    await resumed(server, client)
    async with asyncio.timeout(10):
        await hang.cancelled.wait()


async def test_the_right_session_id_without_the_peers_token_resumes_nothing(
    transport_kind: str, peers: Stack
) -> None:
    """Same identity (claimed, on a plain transport), the real session id: no token, no
    resumption."""
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="server", **RESUME)
    )
    owner = await RawClient.connect(server, transport_kind)
    thief = await RawClient.connect(server, transport_kind)
    try:
        session = "q" * 32
        await owner.send(
            m.Hello(identity="agent-1", max_body_size=MAX, token="t" * 32, session=session)
        )
        assert isinstance(await owner.receive(), m.Welcome)
        for token in ("u" * 32, None):
            await thief.send(
                m.Hello(
                    identity="agent-1", max_body_size=MAX, token=token, session=session, received=0
                )
            )
            answer = await thief.receive()
            assert isinstance(answer, m.Goodbye)
            assert "cannot resume a session of another peer" in answer.reason
            await thief.aclose()
            thief = await RawClient.connect(server, transport_kind)
        assert server.statistics().resumes_refused == 2
        assert server.peers == {"agent-1"}
    finally:
        await owner.aclose()
        await thief.aclose()


async def test_what_a_reconnecting_remote_queued_before_its_hello_is_counted_quietly(
    transport_kind: str, peers: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A ZeroMQ DEALER sends its old connection's queue (numbered messages, a ping) before
    the Hello of its new one: expected after every blip, so no WARNING, and no harm."""
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="server", **RESUME)
    )
    raw = await RawClient.connect(server, transport_kind)
    try:
        with caplog.at_level(logging.WARNING, logger="callosum_like"):
            numbered = Replay("s" * 32, MAX).stamp(encode(m.Call(id=7, method="x")))
            await raw.send_frames([bytes(frame) for frame in numbered])
            await raw.send(m.Ping())
            await raw.send(m.Hello(identity="agent-1", max_body_size=MAX))
            assert isinstance(await raw.receive(), m.Welcome)
        assert server.statistics().dropped_messages == 2
        assert server.statistics().calls_in == 0
        assert [r.getMessage() for r in caplog.records] == []
        assert server.peers == {"agent-1"}
    finally:
        await raw.aclose()
