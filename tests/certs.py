"""Test certificates: one CA for the whole test session, written to files once.

The QUIC transport takes certificate *files* (aioquic loads PEM files), and TLS over TCP
takes ``ssl.SSLContext`` objects; both come from the same ``trustme`` CA, made once (making
keys is the slow part), in a temporary directory removed at exit. The directory is named in
the environment (``CL_TEST_CERTS``), so that the test's child processes (tests/relayproc.py)
use the same files, and so the same CA, instead of making their own.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trustme

#: The environment variable naming the directory of the test certificates.
ENVIRONMENT = "CL_TEST_CERTS"


@dataclass(frozen=True)
class Identity:
    """A certificate and its key, as files."""

    certfile: str
    keyfile: str


@functools.cache
def _directory() -> Path:
    inherited = os.environ.get(ENVIRONMENT)
    if inherited and os.path.isdir(inherited):
        return Path(inherited)  # a child process of the test: its parent's files
    path = Path(tempfile.mkdtemp(prefix="cl-certs-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ[ENVIRONMENT] = str(path)
    return path


@functools.cache
def session_ca() -> trustme.CA:
    """The session's CA."""
    return trustme.CA()


@functools.cache
def ca_file() -> str:
    """The session CA's certificate, as a PEM file."""
    path = _directory() / "ca.pem"
    if not path.exists():
        session_ca().cert_pem.write_to_path(str(path))
    return str(path)


@functools.cache
def identity(common_name: str, *, ca: trustme.CA | None = None) -> Identity:
    """A certificate for localhost (127.0.0.1 to .3) whose subject CN is ``common_name``."""
    base = _directory() / (common_name if ca is None else f"{common_name}-{id(ca)}")
    found = Identity(f"{base}.pem", f"{base}.key")
    if ca is None and os.path.exists(found.keyfile):
        return found  # made by the parent process
    hosts = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost")
    cert = (ca or session_ca()).issue_cert(*hosts, common_name=common_name)
    cert.cert_chain_pems[0].write_to_path(found.certfile)
    cert.private_key_pem.write_to_path(found.keyfile)
    return found


def quic_server_options() -> dict[str, str]:
    """``QUICTransport`` options of a bound peer: its certificate."""
    server = identity("server")
    return {"certfile": server.certfile, "keyfile": server.keyfile}


def quic_client_options() -> dict[str, str]:
    """``QUICTransport`` options of a connecting peer: the CA it trusts."""
    return {"cafile": ca_file()}
