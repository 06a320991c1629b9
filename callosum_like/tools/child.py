"""The child's side of the tools' processes: bind on loopback, say ``READY``, stop on EOF.

Theory of operation: a server process of the demo, the benchmark or the soak binds on
127.0.0.1 (port 0 unless told; a child in a host of a network test bed, on that host's
address), prints ``READY <address>`` (``say_ready``) for its parent's
``supervisor.ChildProcess``, and serves until its stdin reaches end-of-file
(``wait_for_stdin_eof``): that is the parent's request to stop, and also what happens when the
parent dies. Ctrl-C is left to the parent (``ignore_sigint``), which stops its children in
order. ``connect_address`` turns the address a server reported into one to connect to.
``run_loop`` runs a child's main coroutine on uvloop when asked or installed.

Only the tools import this module.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from ..addresses import AddressLike, NATSAddress, QUICAddress, TCPAddress
from ..lower.base import Transport

__all__ = [
    "TRANSPORTS",
    "BENCH_TRANSPORTS",
    "NATS_URL_VARIABLE",
    "transport_of",
    "bind_address",
    "connect_address",
    "say_ready",
    "announce",
    "wait_for_stdin_eof",
    "ignore_sigint",
    "run_loop",
]

T = TypeVar("T")

#: The transports the demo, the benchmark and the soak can use, by command-line name.
TRANSPORTS: Final = ("zeromq", "tcp")
#: The benchmark's: QUIC too (with throw-away certificates, ``tools.certificates``), and NATS
#: through the nats-server the benchmark starts.
BENCH_TRANSPORTS: Final = (*TRANSPORTS, "quic", "nats")
#: The environment variable that tells a child the URL of that nats-server.
NATS_URL_VARIABLE: Final = "CALLOSUM_LIKE_NATS_URL"


def transport_of(transport: str, *, bound: bool) -> Transport | None:
    """The ``Peer(transport=...)`` of a child for ``transport``: ``None`` for the default."""
    if transport != "quic":
        return None
    from .certificates import quic_transport

    return quic_transport(bound=bound)


def bind_address(transport: str, port: int = 0, host: str = "127.0.0.1") -> AddressLike:
    """An address on ``host`` for ``transport`` (``zeromq``, ``tcp``, ``quic``, ``nats``).

    ``host`` is 127.0.0.1 unless told: a child in a host of a network test bed binds on
    that host's address (``NetBed.address``).
    """
    if transport == "tcp":
        return TCPAddress(host, port)
    if transport == "nats":  # a subject of this process's own, on the parent's nats-server
        return NATSAddress(os.environ[NATS_URL_VARIABLE], f"bench-{os.getpid()}")
    if transport == "quic":
        return QUICAddress(host, port)
    return f"tcp://{host}:{port}"


def connect_address(transport: str, address: str) -> AddressLike:
    """Turn the ``address`` a bound peer reported back into something to connect to.

    Args:
        transport: ``zeromq``, ``tcp``, ``quic`` or ``nats``.
        address: ``Peer.address`` of the bound side (``tcp://HOST:PORT``, ``HOST:PORT`` or
            a NATS URL with its subject).
    """
    if transport in ("tcp", "quic"):
        host, port = address.rsplit(":", 1)
        return (TCPAddress if transport == "tcp" else QUICAddress)(host, int(port))
    if transport == "nats":
        return NATSAddress.from_url(address)
    return address


def say_ready(address: str) -> None:
    """Tell the parent where we serve: the ``READY <address>`` line."""
    print(f"READY {address}", flush=True)


async def announce(address: str) -> None:
    """Tell the parent where we serve, then serve until our stdin closes."""
    say_ready(address)
    await wait_for_stdin_eof()


async def wait_for_stdin_eof() -> None:
    """Return once our stdin reaches end-of-file: the parent's request to stop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while await reader.read(4096):
            pass
    finally:
        transport.close()


def ignore_sigint() -> None:
    """Leave Ctrl-C to the parent, which stops its children in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_loop(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``main`` on uvloop (``uvloop``, or ``auto`` when installed) or asyncio's loop.

    Raises:
        ImportError: ``loop`` is ``uvloop`` and uvloop is not installed.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop != "asyncio":
        try:
            factory = importlib.import_module("uvloop").new_event_loop
        except ImportError:
            if loop == "uvloop":
                raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
