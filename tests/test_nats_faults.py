"""Bad input and failures on NATS: other clients of the server, floods, a server that dies.

Without permissions any client of the server may publish on our subjects: what it sends is
dropped and counted (``statistics().dropped_messages``), logged once, and the other peers
are served throughout. A server that dies fails the calls in flight with
``PeerDisconnectedError`` (or, with ``resume_timeout``, carries them over once it is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

import callosum_like as cl
from callosum_like.lower.nats_envelope import BYE, DATA, KNOCK, PART, Subjects
from callosum_like.wire.framing import pack_batch

from .conftest import until
from .natsserver import NATSServer, nats_address, nats_server, require_binary

__all__ = ["nats_server"]

pytestmark = pytest.mark.timeout(60)


async def echo(request: cl.Request) -> Any:
    return request.body


async def slow(request: cl.Request) -> Any:
    await asyncio.sleep(float(request.body))
    return "done"


@contextlib.asynccontextmanager
async def served(address: cl.NATSAddress, **options: Any) -> AsyncIterator[tuple[cl.Peer, cl.Peer]]:
    server = cl.Peer(bind=address, identity="manager", **options)
    server.handle_function("echo", echo)
    server.handle_function("slow", slow)
    client = cl.Peer(connect=address, identity="agent-1", **options)
    client.handle_function("echo", echo)
    async with server, client:
        yield server, client


@contextlib.asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[Any]:
    client = await nats.connect(url)
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_garbage_truncated_and_forged_messages_are_dropped_and_counted(
    nats_server: NATSServer, caplog: pytest.LogCaptureFixture
) -> None:
    address = nats_address(nats_server)
    subjects = Subjects(address.subject)
    async with served(address) as (server, client), raw_client(nats_server.url) as raw:
        assert await client.invoke("echo", b"before") == b"before"
        before = server.statistics().dropped_messages
        knocked = "forger.i.0"
        inbox = f"{address.subject}.out.forger._k.x"
        victim = f"{address.subject}.out.agent-1._k.x"
        hostile: list[tuple[str, bytes, str]] = [
            (f"{address.subject}.in.a.b.c", b"", ""),  # empty
            (f"{address.subject}.in.a.b.c", b"\x09junk", ""),  # unknown kind
            (
                f"{address.subject}.in.a.b.c",
                bytes([DATA]) + pack_batch([[b"x"]]),
                "",
            ),  # unknown key
            (f"{address.subject}.in.a.b.c", bytes([KNOCK]), victim),  # a reply to someone else
            (f"{address.subject}.in.a.b.c", bytes([KNOCK]), ""),  # a knock without a reply
            (subjects.inbound(knocked.encode()), bytes([KNOCK]), inbox),  # known from now on
            (subjects.inbound(knocked.encode()), bytes([DATA]) + b"\x00\x05short", ""),  # truncated
            (subjects.inbound(knocked.encode()), bytes([PART]) + b"\x00\x01", ""),  # cut short:
            (subjects.inbound(knocked.encode()), bytes([DATA]) + pack_batch([[b"?"]]), ""),
            (subjects.inbound(knocked.encode()), bytes([BYE]), ""),
        ]
        with caplog.at_level(logging.WARNING):
            for subject, payload, reply in hostile:
                await raw.publish(subject, payload, reply=reply)
            await raw.flush()
            for n in range(20):  # served throughout
                assert await client.invoke("echo", n) == n
            # empty, unknown kind, unknown key, forged reply, no reply, truncated, cut short,
            # and the Peer's own count of the one well-framed message that is no message
            await until(
                lambda: server.statistics().dropped_messages - before >= 8,
                lambda: f"dropped {server.statistics().dropped_messages - before}",
            )
        assert server.peers == {"agent-1"}
        assert await client.invoke("echo", b"after") == b"after"
        assert server.statistics().dropped_messages - before == 8
        warnings = [r.getMessage() for r in caplog.records if "dropped a message" in r.getMessage()]
        assert any("reply subject not its own" in w for w in warnings), warnings


@pytest.mark.asyncio
async def test_a_flood_from_one_client_costs_the_others_nothing(nats_server: NATSServer) -> None:
    address = nats_address(nats_server)
    async with served(address) as (server, client), raw_client(nats_server.url) as raw:
        flood_subject = f"{address.subject}.in.flood.x.0"
        told: list[bytes] = []

        async def bye(msg: Any) -> None:
            told.append(msg.data)

        await raw.subscribe(f"{address.subject}.out.flood.>", cb=bye)
        payload = bytes([DATA]) + pack_batch([[b"h" * 16, b"b" * 200]])

        async def flood() -> None:
            for n in range(20_000):
                await raw.publish(flood_subject, payload)
                if n % 1000 == 0:
                    await asyncio.sleep(0)

        flooding = asyncio.create_task(flood())
        try:
            while not flooding.done():
                assert await client.invoke("echo", b"ok", timeout=10) == b"ok"
        finally:
            await flooding
        await raw.flush()
        await until(
            lambda: server.statistics().dropped_messages >= 20_000,
            lambda: f"dropped {server.statistics().dropped_messages}",
        )
        assert told == [bytes([BYE])]  # told once, not 20,000 times
        assert server.peers == {"agent-1"}
        assert await client.invoke("echo", b"still") == b"still"


@pytest.mark.asyncio
async def test_a_16_mib_body_crosses_a_server_with_the_default_max_payload(
    nats_server: NATSServer,
) -> None:
    """The server keeps its default 1 MiB ``max_payload``; the transport splits above it."""
    address = nats_address(nats_server)
    body = bytes(range(256)) * (16 * 2**20 // 256)
    options = {"max_body_size": 32 * 2**20, "chunk_size": 8 * 2**20}  # chunks over 1 MiB too
    async with served(address, **options) as (_server, client):
        assert await client.invoke("echo", body) == body


@contextlib.asynccontextmanager
async def own_server() -> AsyncIterator[NATSServer]:
    require_binary()
    with NATSServer(name="dies") as server:
        yield server


@pytest.mark.asyncio
async def test_a_server_that_dies_mid_call_fails_the_call_and_the_peers_come_back() -> None:
    async with own_server() as nats_server:
        address = nats_address(nats_server)
        async with served(address, heartbeat_interval=0.5, heartbeat_timeout=2) as (server, client):
            call = asyncio.create_task(client.invoke("slow", b"30"))
            await asyncio.sleep(0.3)
            nats_server.kill()
            async with asyncio.timeout(10):
                with pytest.raises(cl.PeerDisconnectedError):
                    await call
            nats_server.start()  # the same port
            await client.wait_for_peer("manager", timeout=20)
            await server.wait_for_peer("agent-1", timeout=20)
            assert await client.invoke("echo", b"back", timeout=10) == b"back"
            assert await server.invoke("echo", b"down", to="agent-1", timeout=10) == b"down"


@pytest.mark.asyncio
async def test_with_resumption_a_call_carries_over_a_server_restart() -> None:
    async with own_server() as nats_server:
        address = nats_address(nats_server)
        options = {"heartbeat_interval": 0.5, "heartbeat_timeout": 3, "resume_timeout": 20}
        async with served(address, **options) as (_server, client):
            call = asyncio.create_task(client.invoke("slow", b"2"))
            await asyncio.sleep(0.3)
            nats_server.kill()
            await asyncio.sleep(0.5)
            nats_server.start()
            async with asyncio.timeout(30):
                assert await call == "done"
            assert await client.invoke("echo", b"after") == b"after"


@pytest.mark.asyncio
async def test_through_a_cluster_a_peer_fails_over_to_another_server() -> None:
    """Manager on server A, agent given A and B, first on B: B dies, the agent moves to A."""
    require_binary()
    cluster = 'cluster {{ name: "c", listen: "127.0.0.1:-1" {routes} }}'
    with NATSServer(cluster.format(routes=""), name="a") as a:
        routes = f', routes: ["nats-route://127.0.0.1:{a.route_port()}"]'
        with NATSServer(cluster.format(routes=routes), name="b") as b:
            await asyncio.to_thread(a.wait_for_log, "Route connection created")
            subject = nats_address(a).subject
            server = cl.Peer(bind=cl.NATSAddress(a.url, subject), identity="manager")
            server.handle_function("echo", echo)
            transport = cl.NATSTransport(identity="agent-1", randomize_servers=False)  # b first
            client = cl.Peer(
                connect=cl.NATSAddress([b.url, a.url], subject),
                identity="agent-1",
                transport=transport,
                heartbeat_interval=0.5,
                heartbeat_timeout=2,
            )
            async with server, client:
                assert await client.invoke("echo", b"via a server of the cluster") == (
                    b"via a server of the cluster"
                )
                b.kill()
                async with asyncio.timeout(20):
                    while True:  # calls fail while the agent moves over, then succeed
                        with contextlib.suppress(cl.PeerDisconnectedError, cl.RPCTimeoutError):
                            if await client.invoke("echo", b"moved", timeout=2) == b"moved":
                                break
                        await asyncio.sleep(0.1)
                assert server.peers == {"agent-1"}
                assert client.statistics().reconnects == 1  # it was on b, and moved
