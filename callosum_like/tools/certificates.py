"""Throw-away TLS certificates for the tools' QUIC processes (the benchmark's children).

Theory of operation: QUIC always runs TLS 1.3, so a tool that starts a QUIC server process
and a QUIC client process needs a certificate the client trusts. ``tool_certificates()``
makes, once per tool run, a private CA and a server certificate for ``localhost`` (EC P-256,
valid one day) in a temporary directory removed at exit, and names the directory in the
environment (``ENVIRONMENT``), so that every child process the tool starts afterwards finds
the same files instead of making its own. ``quic_transport`` is the transport a child uses:
the server's certificate to bind, the CA (checking the name ``localhost``, so any address
works, a test bed's too) to connect. Nothing here is for production use.

Only the tools import this module.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..lower.quic import QUICTransport

__all__ = ["ENVIRONMENT", "tool_certificates", "quic_transport"]

#: The environment variable naming the directory of the tool's certificates.
ENVIRONMENT: Final = "CALLOSUM_LIKE_TOOL_CERTS"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _make(directory: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("callosum_like tool CA"))
        .issuer_name(_name("callosum_like tool CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("bench-server"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca", ca_key, ca)
    _write(directory / "server", key, cert)


def tool_certificates() -> Path:
    """The directory of the tool's CA (``ca.pem``) and server certificate (``server.pem/key``)."""
    inherited = os.environ.get(ENVIRONMENT)
    if inherited and (Path(inherited) / "server.key").is_file():
        return Path(inherited)
    directory = Path(tempfile.mkdtemp(prefix="callosum-like-certs-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    _make(directory)
    os.environ[ENVIRONMENT] = str(directory)
    return directory


def quic_transport(*, bound: bool) -> QUICTransport:
    """A QUIC transport with the tool's certificates, to bind (``bound``) or to connect."""
    directory = tool_certificates()
    if bound:
        return QUICTransport(certfile=directory / "server.pem", keyfile=directory / "server.key")
    return QUICTransport(cafile=directory / "ca.pem", server_hostname="localhost")
