"""Real ``nats-server`` processes for the tests (``callosum_like.tools.nats_server``).

``nats_server`` is one session-wide server on a free port, shared by every test that only
needs *a* server (each test uses its own subjects); tests that stop, restart or configure a
server start their own with ``NATSServer``. A missing binary fails the test: CI installs it
(``make install``), so a skip would hide a broken installation.
"""

from __future__ import annotations

import itertools
import os

import pytest

import callosum_like as cl
from callosum_like.tools.nats_server import NATSServer, find_binary

__all__ = [
    "NATSServer",
    "nats_server",
    "nats_address",
    "shared_server",
    "stop_shared",
    "unique_subject",
    "require_binary",
]

_subjects = itertools.count()


def require_binary() -> str:
    """The ``nats-server`` binary, or the test fails saying how to install it."""
    try:
        return find_binary()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


def unique_subject(prefix: str = "t") -> str:
    """A subject no other test of this run uses."""
    return f"{prefix}{os.getpid()}-{next(_subjects)}"


_shared: list[NATSServer] = []


def shared_server() -> NATSServer:
    """The session's server, started on first use (``stop_shared`` stops it)."""
    if not _shared:
        require_binary()
        _shared.append(NATSServer(name="session").start())
    return _shared[0]


def stop_shared() -> None:
    """Stop the session's server, if it was started."""
    while _shared:
        _shared.pop().cleanup()


@pytest.fixture
def nats_server() -> NATSServer:
    """The session's server (stopped at the end of the session by ``tests/conftest.py``)."""
    return shared_server()


def nats_address(server: NATSServer, prefix: str = "t") -> cl.NATSAddress:
    """A fresh subject on ``server``."""
    return cl.NATSAddress(server.url, unique_subject(prefix))
