"""Calls over QUIC, with a client certificate that names the client.

    .venv/bin/python examples/quic.py

QUIC needs certificates (TLS 1.3 is always on). This example makes a throw-away CA in a
temporary directory, a certificate for the server (``localhost``) and one for the client
(``CN=agent-7``), then runs both peers in this process. The server asks for client
certificates (it has a ``cafile``): the client claims ``identity="admin"``, but the server
knows it as ``agent-7``, the name its certificate proves. In production, use certificates
from your own CA.
"""

from __future__ import annotations

import asyncio
import datetime
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import callosum_like as cl


def issue(
    directory: Path,
    name: str,
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and certificate for ``name`` (self-signed CA when ``ca`` is None), as files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if ca is None else ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if ca is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        names = x509.SubjectAlternativeName([x509.DNSName("localhost")])
        builder = builder.add_extension(names, critical=False)
    cert = builder.sign(key if ca is None else ca[0], hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key, cert


async def run(certs: Path) -> None:
    ca = issue(certs, "ca")
    issue(certs, "server", ca)
    issue(certs, "agent-7", ca)

    server_transport = cl.QUICTransport(
        certfile=certs / "server.pem",
        keyfile=certs / "server.key",
        cafile=certs / "ca.pem",  # require client certificates from this CA
    )
    async with cl.Peer(
        bind=cl.QUICAddress("127.0.0.1", 0), transport=server_transport, identity="server"
    ) as server:

        async def whoami(request: cl.Request) -> str:
            return f"you are {request.peer_id!r}"

        server.handle_function("whoami", whoami)
        port = int(server.address.rsplit(":", 1)[1])
        print(f"server  listening on QUIC {server.address}")

        client_transport = cl.QUICTransport(
            cafile=certs / "ca.pem",
            server_hostname="localhost",
            certfile=certs / "agent-7.pem",
            keyfile=certs / "agent-7.key",
        )
        async with cl.Peer(
            connect=cl.QUICAddress("127.0.0.1", port),
            transport=client_transport,
            identity="admin",  # a claim: the certificate says otherwise
        ) as client:
            print("client  whoami ->", await client.invoke("whoami"))
            print("server  knows", sorted(server.peers))


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(Path(directory)))
    print("done")


if __name__ == "__main__":
    main()
