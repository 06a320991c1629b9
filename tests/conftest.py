"""Shared fixtures: transports by name, peer pairs that always close, free ports.

Every network test runs on loopback with ports chosen by the OS (port 0), never fixed ones.

Transports by name: ``KINDS`` is the table of the transports the Peer-level tests run over
(``transport_kind``): how to bind one, how to reach a bound one from its ``Peer.address``, and
how to tell its addresses. Host-and-port kinds bind their own loopback address, 127.0.0.x, so
that a server's address says which transport serves it (TCP and QUIC both say
``host:port``); NATS addresses are URLs with the subject. A kind that needs options on every
Peer (QUIC's certificates) registers an address subclass with a transport factory that
supplies them (``QUICTestAddress``): a test then writes ``cl.Peer(bind=bind_address(kind))``
and ``cl.Peer(connect=connect_address(server))`` alike for every kind, and relays pick their
transports the same way.

A test that needs what only some transports have is marked
``@pytest.mark.transports(*SOCKET_TRANSPORTS)`` (a socket of ours between the two peers: raw
bytes written into it, peers in child processes) or ``@pytest.mark.transports(*PROXY_TRANSPORTS)``
(a TCP proxy between the peers that cuts or freezes the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import zmq

import callosum_like as cl
from callosum_like.lower.registry import register_transport

from .certs import quic_client_options, quic_server_options
from .natsserver import shared_server, stop_shared, unique_subject


class QUICTestAddress(cl.QUICAddress):
    """A QUIC address whose default transport carries the test certificates (both sides)."""

    __slots__ = ()


class QUICTestTransport(cl.Transport):
    """QUIC with the test certificates: a server's certificate to bind, the CA to connect."""

    def __init__(self, **options: Any) -> None:
        self._options = options

    async def bind(self, address: Any, **kwargs: Any) -> Any:
        return await cl.QUICTransport(**quic_server_options(), **self._options).bind(
            address, **kwargs
        )

    async def connect(self, address: Any, **kwargs: Any) -> Any:
        return await cl.QUICTransport(**quic_client_options(), **self._options).connect(
            address, **kwargs
        )


register_transport(QUICTestAddress, QUICTestTransport)


@dataclass(frozen=True)
class Kind:
    """How the tests use one transport (see the module doc)."""

    #: The loopback address its servers bind (one per host-and-port kind), or ``""``.
    host: str
    #: Makes an address from a host and port (or, for NATS, from a URL and a subject).
    address: Callable[[str, int], Any]


def _nats_address(host: str, port: int) -> cl.NATSAddress:
    """A subject of its own on the session's nats-server (``host``/``port`` unused)."""
    return cl.NATSAddress(shared_server().url, unique_subject())


#: The transports the Peer-level tests run over, by name. ZeroMQ's addresses are URIs.
KINDS: dict[str, Kind] = {
    "zeromq": Kind("127.0.0.1", lambda host, port: f"tcp://{host}:{port}"),
    "tcp": Kind("127.0.0.1", cl.TCPAddress),
    "quic": Kind("127.0.0.3", QUICTestAddress),
    "nats": Kind("", _nats_address),
}

#: The transports every Peer-level test runs against.
TRANSPORTS = list(KINDS)
#: Those with a socket of ours between the two peers (see the module doc).
SOCKET_TRANSPORTS = ["zeromq", "tcp", "quic"]
#: Those a TCP proxy can stand between (see the module doc).
PROXY_TRANSPORTS = ["zeromq", "tcp"]

PairFactory = Callable[..., Awaitable[tuple[cl.Peer, cl.Peer]]]


def free_port() -> int:
    """A port that was free a moment ago (for tests that need a number before binding)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bind_address(kind: str) -> Any:
    """Where a server of transport ``kind`` binds: its loopback host, port 0 (NATS: a subject)."""
    spec = KINDS[kind]
    return spec.address(spec.host, 0)


def same_address(kind: str, address: str) -> Any:
    """``address`` (a ``Peer.address``) as an address of transport ``kind`` to reach it at."""
    if address.startswith(("tcp://", "ipc://", "inproc://")):
        return address
    if address.startswith(("nats://", "tls://")):
        return cl.NATSAddress.from_url(address)
    host, port = address.rsplit(":", 1)
    return KINDS[kind].address(host, int(port))


async def open_rebinding(make: Callable[[], cl.Peer], timeout: float = 10) -> cl.Peer:
    """Open the bound peer ``make()`` builds, retried while its address is still in use.

    For a server restarted on the address of one just closed in the same process: libzmq
    releases a closed socket's port in its I/O thread, a moment after ``close`` returns.
    Any other failure to open is raised at once. Close the peer with ``aclose()``.
    """
    async with asyncio.timeout(timeout):
        while True:
            peer = make()
            try:
                return await peer.__aenter__()
            except (OSError, zmq.ZMQError) as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
            await asyncio.sleep(0.05)


def kind_of(address: str) -> str:
    """The transport kind serving ``address`` (a bound ``Peer.address``)."""
    if address.startswith(("tcp://", "ipc://", "inproc://")):
        return "zeromq"
    if address.startswith(("nats://", "tls://")):
        return "nats"
    host = address.rsplit(":", 1)[0]
    return next((k for k, spec in KINDS.items() if spec.host == host and k != "zeromq"), "tcp")


def connect_address(server: cl.Peer) -> Any:
    """Where a client reaches ``server`` (which was bound to port 0)."""
    address = server.address
    return same_address(kind_of(address), address)


class Meeting:
    """A handler that returns only once ``size`` different callers are inside it at once.

    It proves that calls ran side by side (for instance, that equal order keys from two
    callers did not order each other); it answers with the caller's ``peer_id``.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.inside: set[str] = set()
        self.complete = asyncio.Event()

    async def __call__(self, request: cl.Request) -> Any:
        self.inside.add(request.peer_id)
        if len(self.inside) >= self.size:
            self.complete.set()
        await asyncio.wait_for(self.complete.wait(), 5)
        return request.peer_id


class Blocker:
    """A handler that blocks until cancelled, and says when it started and was cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def __call__(self, request: cl.Request) -> Any:
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def open_relay(
    stack: contextlib.AsyncExitStack, kind: str, upstream: Any, identity: str, **options: Any
) -> cl.Relay:
    """A relay bound on 127.0.0.1, connected up to ``upstream``; closed with ``stack``."""
    relay = cl.Relay(bind=bind_address(kind), upstream=upstream, identity=identity, **options)
    await stack.enter_async_context(relay)
    await relay.wait_upstream(timeout=10)
    return relay


@pytest.fixture(scope="session", autouse=True)
def _stop_nats_server() -> Iterator[None]:
    """Stop the session's nats-server (started by the first test that needs it)."""
    yield
    stop_shared()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that takes ``transport_kind`` on every transport its marker allows."""
    if "transport_kind" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("transports")
        kinds = list(marker.args) if marker is not None else TRANSPORTS
        metafunc.parametrize("transport_kind", kinds, indirect=True)


@pytest.fixture
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def peers() -> AsyncIterator[contextlib.AsyncExitStack]:
    """An exit stack that closes every peer entered on it, even when the test fails."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


@pytest_asyncio.fixture
async def make_pair(transport_kind: str, peers: contextlib.AsyncExitStack) -> PairFactory:
    """Factory: ``server, client = await make_pair(server_kwargs..., client=dict(...))``."""

    async def factory(
        *, client: dict[str, Any] | None = None, **server_kwargs: Any
    ) -> tuple[cl.Peer, cl.Peer]:
        server_kwargs.setdefault("identity", "server")
        server = await peers.enter_async_context(
            cl.Peer(bind=bind_address(transport_kind), **server_kwargs)
        )
        client_kwargs = {"identity": "agent-1", **(client or {})}
        peer = await peers.enter_async_context(
            cl.Peer(connect=connect_address(server), **client_kwargs)
        )
        return server, peer

    return factory


@pytest_asyncio.fixture
async def connect_client(
    peers: contextlib.AsyncExitStack,
) -> Callable[..., Awaitable[cl.Peer]]:
    """Factory: another client of an existing server, closed at the end of the test."""

    async def factory(server: cl.Peer, **kwargs: Any) -> cl.Peer:
        return await peers.enter_async_context(cl.Peer(connect=connect_address(server), **kwargs))

    return factory


async def until(
    condition: Callable[[], bool], what: Callable[[], str], timeout: float = 10
) -> None:
    """Poll ``condition`` until it holds; after ``timeout`` seconds, fail with ``what()``."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what()}")
