"""Identities proven by client certificates, over QUIC and over TCP with TLS.

A client certificate names its holder: the bound peer knows the client by the certificate's
subject CN (or what ``identity_from_certificate`` derives from it), whatever ``identity=``
the client claims; a certificate that does not verify, or that the hook refuses, gets
nothing: no handshake, no handler runs.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any

import pytest
import trustme

import callosum_like as cl
from callosum_like.lower.certificates import PeerCertificate

from .certs import Identity, ca_file, identity, quic_server_options

pytestmark = [pytest.mark.timeout(30), pytest.mark.asyncio]

KINDS = ["quic", "tcp"]


def server_transport(kind: str, **options: Any) -> cl.Transport:
    """A bound transport that requires client certificates from the test CA."""
    if kind == "quic":
        return cl.QUICTransport(**quic_server_options(), cafile=ca_file(), **options)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file())
    server = identity("server")
    context.load_cert_chain(server.certfile, server.keyfile)
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return cl.TCPTransport(ssl=context, **options)


def client_transport(kind: str, cert: Identity | None) -> cl.Transport:
    """A connecting transport presenting ``cert`` (or none)."""
    if kind == "quic":
        files = {} if cert is None else {"certfile": cert.certfile, "keyfile": cert.keyfile}
        return cl.QUICTransport(cafile=ca_file(), **files)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file())
    if cert is not None:
        context.load_cert_chain(cert.certfile, cert.keyfile)
    return cl.TCPTransport(ssl=context)


def address(kind: str, port: int = 0) -> Any:
    return cl.QUICAddress("127.0.0.1", port) if kind == "quic" else cl.TCPAddress("127.0.0.1", port)


async def serve(stack: contextlib.AsyncExitStack, kind: str, **options: Any) -> cl.Peer:
    server = await stack.enter_async_context(
        cl.Peer(bind=address(kind), transport=server_transport(kind, **options))
    )

    async def whoami(request: cl.Request) -> str:
        return request.peer_id

    server.handle_function("whoami", whoami)
    return server


def reach(kind: str, server: cl.Peer) -> Any:
    return address(kind, int(server.address.rsplit(":", 1)[1]))


@pytest.mark.parametrize("kind", KINDS)
async def test_the_certificate_names_the_client_whatever_it_claims(
    kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await serve(peers, kind)
    async with cl.Peer(
        connect=reach(kind, server),
        identity="admin",  # a claim; the certificate says agent-7
        transport=client_transport(kind, identity("agent-7")),
    ) as client:
        assert await client.invoke("whoami") == "agent-7"
    assert "admin" not in server.peers


@pytest.mark.parametrize("kind", KINDS)
async def test_the_identity_hook_derives_the_identity(
    kind: str, peers: contextlib.AsyncExitStack
) -> None:
    seen: list[PeerCertificate] = []

    def hook(certificate: PeerCertificate) -> str | None:
        seen.append(certificate)
        name = certificate.subject_common_name
        return None if name == "intruder" else f"cert-{name}"

    server = await serve(peers, kind, identity_from_certificate=hook)
    async with cl.Peer(
        connect=reach(kind, server),
        identity="admin",
        transport=client_transport(kind, identity("agent-8")),
    ) as client:
        assert await client.invoke("whoami") == "cert-agent-8"
    assert seen
    assert seen[0].x509.subject.rfc4514_string().startswith("CN=agent-8")
    with pytest.raises((cl.AuthenticationError, cl.RPCTimeoutError)):
        async with cl.Peer(
            connect=reach(kind, server),
            transport=client_transport(kind, identity("intruder")),
            connect_timeout=2,
        ):
            pass
    assert server.statistics().calls_in == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cert", ["untrusted", "none"])
async def test_a_client_without_a_trusted_certificate_gets_nothing(
    kind: str, cert: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await serve(peers, kind)
    ran: list[str] = []

    async def echo(request: cl.Request) -> Any:
        ran.append(request.peer_id)
        return request.body

    server.handle_function("echo", echo)
    stranger = identity("agent-9", ca=trustme.CA()) if cert == "untrusted" else None
    with pytest.raises((cl.AuthenticationError, cl.RPCTimeoutError)):
        async with cl.Peer(
            connect=reach(kind, server),
            identity="agent-9",
            transport=client_transport(kind, stranger),
            connect_timeout=2,
        ) as client:
            await client.invoke("echo", 1)
    assert ran == []
    assert server.peers == frozenset()


async def test_without_a_cafile_the_claim_stands(peers: contextlib.AsyncExitStack) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=address("quic"), transport=cl.QUICTransport(**quic_server_options()))
    )

    async def whoami(request: cl.Request) -> str:
        return request.peer_id

    server.handle_function("whoami", whoami)
    async with cl.Peer(
        connect=reach("quic", server),
        identity="claimed",
        transport=client_transport("quic", identity("agent-7")),  # not asked for
    ) as client:
        assert await client.invoke("whoami") == "claimed"


async def test_a_client_refuses_a_server_it_does_not_trust(
    peers: contextlib.AsyncExitStack,
) -> None:
    other = identity("server", ca=trustme.CA())
    server = await peers.enter_async_context(
        cl.Peer(
            bind=address("quic"),
            transport=cl.QUICTransport(certfile=other.certfile, keyfile=other.keyfile),
        )
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        async with cl.Peer(connect=reach("quic", server), transport=client_transport("quic", None)):
            pass


async def test_quic_options_are_checked() -> None:
    with pytest.raises(ValueError, match="certfile and keyfile"):
        cl.QUICTransport(certfile=identity("server").certfile)
    with pytest.raises(ValueError, match="cafile"):
        cl.QUICTransport(cafile="/nonexistent/ca.pem")
    with pytest.raises(TypeError, match="identity_from_certificate"):
        cl.QUICTransport(identity_from_certificate="cn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="identity_from_certificate"):
        cl.TCPTransport(identity_from_certificate=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idle_timeout"):
        cl.QUICTransport(idle_timeout=0)
    with pytest.raises(ValueError, match="max_datagram_size"):
        cl.QUICTransport(max_datagram_size=1000)


async def test_binding_quic_needs_a_certificate() -> None:
    with pytest.raises(ValueError, match="certfile"):
        async with cl.Peer(bind=address("quic"), transport=cl.QUICTransport()):
            pass
