"""Shared fixtures: transports by name, peer pairs that always close, free ports.

Every network test runs on 127.0.0.1 with ports chosen by the OS (port 0), never fixed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
import zmq

import callosum_like as cl

from .natsserver import shared_server, stop_shared, unique_subject

#: The transports every Peer-level test runs against.
TRANSPORTS = ["zeromq", "tcp", "nats"]
#: Those with a socket of ours between the two peers: the tests that cut, freeze or write
#: raw bytes into that socket, or run peers in child processes, are marked
#: ``@pytest.mark.transports(*SOCKET_TRANSPORTS)`` (NATS's own: tests/test_nats_*.py).
SOCKET_TRANSPORTS = ["zeromq", "tcp"]

PairFactory = Callable[..., Awaitable[tuple[cl.Peer, cl.Peer]]]


def free_port() -> int:
    """A port that was free a moment ago (for tests that need a number before binding)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bind_address(kind: str) -> Any:
    if kind == "zeromq":
        return "tcp://127.0.0.1:0"
    if kind == "tcp":
        return cl.TCPAddress("127.0.0.1", 0)
    if kind == "nats":  # a subject of its own on the session's nats-server
        return cl.NATSAddress(shared_server().url, unique_subject())
    raise ValueError(kind)


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


def connect_address(server: cl.Peer) -> Any:
    """Where a client reaches ``server`` (which was bound to port 0)."""
    address = server.address
    if address.startswith(("tcp://", "ipc://", "inproc://")):
        return address
    if address.startswith(("nats://", "tls://")):
        return cl.NATSAddress.from_url(address)
    host, port = address.rsplit(":", 1)
    return cl.TCPAddress(host, int(port))


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
