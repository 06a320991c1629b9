"""Peers over Unix domain sockets (``cl.UnixAddress``): calls both ways, TLS, reconnection.

The transport is given explicitly (``cl.UnixTransport(...)``), as TLS needs.
Socket files live under pytest's ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

import callosum_like as cl

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]
FAST_HEARTBEAT = {"heartbeat_interval": 0.2, "heartbeat_timeout": 2.0}


async def double(request: cl.Request) -> Any:
    return request.body * 2


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def transports(ca: trustme.CA, tls: bool) -> tuple[cl.UnixTransport, cl.UnixTransport]:
    """A transport for the bound side and one for the connecting side."""
    if not tls:
        return cl.UnixTransport(), cl.UnixTransport()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("callosum.test").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return cl.UnixTransport(ssl=server), cl.UnixTransport(
        ssl=client, server_hostname="callosum.test"
    )


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_peers_call_each_other_both_ways(
    tmp_path: Path, ca: trustme.CA, peers: contextlib.AsyncExitStack, tls: bool
) -> None:
    server_transport, client_transport = transports(ca, tls)
    path = tmp_path / "rpc.sock"
    server = await peers.enter_async_context(
        cl.Peer(bind=cl.UnixAddress(path), transport=server_transport, identity="server")
    )
    server.handle_function("double", double)
    assert server.address == str(path)
    client = await peers.enter_async_context(
        cl.Peer(connect=cl.UnixAddress(path), transport=client_transport, identity="agent-1")
    )
    client.handle_function("double", double)
    assert await client.invoke("double", 21) == 42
    await server.wait_for_peer("agent-1", timeout=5)
    assert await server.invoke("double", "ab", to="agent-1") == "abab"
    big = bytes(range(256)) * 8192  # 2 MiB: chunked over the socket
    assert await client.invoke("double", big) == big * 2


async def test_server_closed_and_rebound_is_reconnected(
    tmp_path: Path, peers: contextlib.AsyncExitStack
) -> None:
    path = tmp_path / "restart.sock"

    def serve() -> cl.Peer:
        server = cl.Peer(
            bind=cl.UnixAddress(path),
            transport=cl.UnixTransport(),
            identity="server",
            **FAST_HEARTBEAT,
        )
        server.handle_function("double", double)
        return server

    async with serve():
        client = await peers.enter_async_context(
            cl.Peer(
                connect=cl.UnixAddress(path),
                transport=cl.UnixTransport(),
                identity="agent-1",
                **FAST_HEARTBEAT,
            )
        )
        client.handle_function("double", double)
        events = await peers.enter_async_context(client.events())
        assert await client.invoke("double", 2) == 4
    assert not path.exists()  # the closed server took its socket file with it
    async with asyncio.timeout(10):
        event = await anext(events)
    assert (event.kind, event.identity) == (cl.PeerEventKind.DISCONNECTED, "server")
    async with serve() as second:
        async with asyncio.timeout(10):
            assert await anext(events) == cl.PeerEvent(cl.PeerEventKind.CONNECTED, "server")
        assert await client.invoke("double", 21) == 42
        await second.wait_for_peer("agent-1", timeout=5)
        assert await second.invoke("double", "ab", to="agent-1") == "abab"
        assert client.statistics().reconnects == 1


async def test_a_unix_address_alone_picks_the_transport_registered_for_it(
    tmp_path: Path, peers: contextlib.AsyncExitStack
) -> None:
    """No ``transport=``: the Peer asks the registry, and never names a transport itself."""
    path = str(tmp_path / "registry.sock")
    server = await peers.enter_async_context(cl.Peer(bind=cl.UnixAddress(path)))
    server.handle_function("double", double)
    client = await peers.enter_async_context(cl.Peer(connect=cl.UnixAddress(path)))
    assert await client.invoke("double", 21) == 42
    assert server.address == client.address == path
