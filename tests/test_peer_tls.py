"""TLS on the TCP transport: encrypted traffic, server verification, client certificates."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
import trustme

import callosum_like as cl

from .test_peer_security import MARKER, Recorder, echo

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


def client_context(ca: trustme.CA, *, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    if with_cert:
        ca.issue_cert("agent-1@example.test").configure_cert(context)
    return context


def port_of(peer: cl.Peer) -> int:
    return int(peer.address.rsplit(":", 1)[1])


@pytest.mark.parametrize("tls", [False, True])
async def test_marker_is_absent_from_the_wire_under_tls(ca: trustme.CA, tls: bool) -> None:
    server_tls = cl.TCPTransport(ssl=server_context(ca)) if tls else cl.TCPTransport()
    client_tls = cl.TCPTransport(ssl=client_context(ca)) if tls else cl.TCPTransport()
    bind = cl.TCPAddress("127.0.0.1", 0)
    async with cl.Peer(bind=bind, transport=server_tls, compress=False) as server:
        server.handle_function("echo", echo)
        async with Recorder(port_of(server)).running() as relay:
            target = cl.TCPAddress("127.0.0.1", relay.port)
            async with cl.Peer(connect=target, transport=client_tls, compress=False) as client:
                assert await client.invoke("echo", MARKER) == MARKER
            captured = bytes(relay.captured)
    assert len(captured) > 100
    assert (MARKER in captured) is not tls


async def test_client_rejects_an_untrusted_server(ca: trustme.CA, peers: Any) -> None:
    server = await peers.enter_async_context(
        cl.Peer(
            bind=cl.TCPAddress("127.0.0.1", 0),
            transport=cl.TCPTransport(ssl=server_context(trustme.CA())),  # another CA
        )
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        async with cl.Peer(
            connect=cl.TCPAddress("127.0.0.1", port_of(server)),
            transport=cl.TCPTransport(ssl=client_context(ca)),
        ):
            pass


async def test_client_certificate_required(ca: trustme.CA, peers: Any) -> None:
    server = await peers.enter_async_context(
        cl.Peer(
            bind=cl.TCPAddress("127.0.0.1", 0),
            transport=cl.TCPTransport(ssl=server_context(ca, require_client_cert=True)),
        )
    )
    server.handle_function("echo", echo)
    target = cl.TCPAddress("127.0.0.1", port_of(server))
    async with cl.Peer(
        connect=target, transport=cl.TCPTransport(ssl=client_context(ca, with_cert=True))
    ) as client:
        assert await client.invoke("echo", 1) == 1
    with pytest.raises((ssl.SSLError, ConnectionError, cl.PeerDisconnectedError, TimeoutError)):
        async with cl.Peer(
            connect=target,
            transport=cl.TCPTransport(ssl=client_context(ca)),
            connect_timeout=3,
        ):
            pass
    assert server.peers == frozenset()


async def test_ssl_option_is_type_checked() -> None:
    with pytest.raises(TypeError, match="ssl"):
        cl.TCPTransport(ssl=True)  # type: ignore[arg-type]
