"""TLS on the TCP transport: encrypted traffic, server verification, client certificates."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import pytest
import trustme

import callosum_like as cl
from callosum_like.lower.base import Connected, Disconnected
from callosum_like.wire import messages as m
from callosum_like.wire.codec import encode, pack_body

from .rawpeer import MAX
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
    ran: list[Any] = []

    async def recording_echo(request: cl.Request) -> Any:
        ran.append(request.body)
        return request.body

    # TLS 1.3 (pinned, so that what the client sees does not depend on the OpenSSL build):
    # the client's side of the TLS handshake completes before the server checks the client's
    # certificate; the server then drops the connection, with no alert that reaches us.
    context = server_context(ca, require_client_cert=True)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    server = await peers.enter_async_context(
        cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), transport=cl.TCPTransport(ssl=context))
    )
    server.handle_function("echo", recording_echo)
    target = cl.TCPAddress("127.0.0.1", port_of(server))
    async with cl.Peer(
        connect=target, transport=cl.TCPTransport(ssl=client_context(ca, with_cert=True))
    ) as client:
        assert await client.invoke("echo", 1) == 1
    assert ran == [1]

    # A Peer without a certificate never gets its handshake through: every connection the
    # transport makes is dropped, until connect_timeout.
    with pytest.raises(cl.RPCTimeoutError, match=r"^no handshake from .* within connect_timeout"):
        async with cl.Peer(
            connect=target, transport=cl.TCPTransport(ssl=client_context(ca)), connect_timeout=1
        ):
            pass

    # And a remote that speaks the protocol by itself gets nothing from the server: its
    # Hello and Call are not answered, the connection ends, no handler runs.
    raw = await cl.TCPTransport(ssl=client_context(ca), reconnect=False).connect(
        target, max_frame_size=MAX
    )
    try:
        assert isinstance(await raw.receive(), Connected)  # our side of TLS 1.3 completed
        with contextlib.suppress(cl.PeerDisconnectedError):  # it may end before we are done
            await raw.send(encode(m.Hello(identity="certless", max_body_size=MAX)))
            await raw.send(encode(m.Call(id=1, method="echo", body=pack_body(2))))
        async with asyncio.timeout(5):
            event = await raw.receive()
        assert isinstance(event, Disconnected), event  # not a Welcome, not a Result
    finally:
        await raw.aclose()
    assert ran == [1]
    assert server.peers == frozenset()
    assert server.statistics().calls_in == 1


async def test_ssl_option_is_type_checked() -> None:
    with pytest.raises(TypeError, match="ssl"):
        cl.TCPTransport(ssl=True)  # type: ignore[arg-type]
