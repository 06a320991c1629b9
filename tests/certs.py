"""Test certificates: one CA for the whole test session, written to files once.

The QUIC transport takes certificate *files* (aioquic loads PEM files), and TLS over TCP
takes ``ssl.SSLContext`` objects; both come from the same ``trustme`` CA, made once per
process (making keys is the slow part), in a temporary directory removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Identity:
    """A certificate and its key, as files."""

    certfile: str
    keyfile: str


@functools.cache
def _directory() -> Path:
    path = Path(tempfile.mkdtemp(prefix="cl-certs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def test_ca() -> trustme.CA:
    """The session's CA."""
    return trustme.CA()


@functools.cache
def ca_file() -> str:
    """The session CA's certificate, as a PEM file."""
    path = _directory() / "ca.pem"
    test_ca().cert_pem.write_to_path(str(path))
    return str(path)


@functools.cache
def identity(common_name: str, *, ca: trustme.CA | None = None) -> Identity:
    """A certificate for 127.0.0.1 and localhost whose subject CN is ``common_name``."""
    issuer = ca or test_ca()
    cert = issuer.issue_cert("127.0.0.1", "localhost", common_name=common_name)
    base = _directory() / f"{common_name}-{id(issuer)}"
    cert.cert_chain_pems[0].write_to_path(f"{base}.pem")
    cert.private_key_pem.write_to_path(f"{base}.key")
    return Identity(f"{base}.pem", f"{base}.key")


def quic_server_options() -> dict[str, str]:
    """``QUICTransport`` options of a bound peer: its certificate."""
    server = identity("server")
    return {"certfile": server.certfile, "keyfile": server.keyfile}


def quic_client_options() -> dict[str, str]:
    """``QUICTransport`` options of a connecting peer: the CA it trusts."""
    return {"cafile": ca_file()}
