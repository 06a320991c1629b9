"""CURVE through the Peer: identity binding, refusals, and proof that nothing readable leaks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

import callosum_like as cl
from callosum_like import auth
from callosum_like.lower.zeromq import shared_context
from callosum_like.wire import messages as m
from callosum_like.wire.codec import encode, pack_body

from .rawpeer import MAX

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

SERVER_KEYS = auth.generate_keypair()
CLIENT_KEYS = auth.generate_keypair()
MARKER = b"MARKER-7f3a-plaintext-canary"


async def whoami(request: cl.Request) -> Any:
    return request.peer_id


async def echo(request: cl.Request) -> Any:
    return request.body


def server_auth(**allowed: bytes) -> auth.ServerAuthenticator:
    return auth.ServerAuthenticator(SERVER_KEYS, allowed={k: u for u, k in allowed.items()})


def client_auth(keys: auth.Keypair = CLIENT_KEYS, server_public: bytes | None = None) -> Any:
    return auth.ClientAuthenticator(keys, server_public_key=server_public or SERVER_KEYS.public)


async def test_authenticated_user_id_is_the_identity(peers: Any) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind="tcp://127.0.0.1:0", authenticator=server_auth(agent_1=CLIENT_KEYS.public))
    )
    server.handle_function("whoami", whoami)
    client = await peers.enter_async_context(
        cl.Peer(connect=server.address, authenticator=client_auth(), identity="pretender")
    )
    client.handle_function("whoami", whoami)
    assert await client.invoke("whoami") == "agent_1"
    assert server.peers == {"agent_1"}
    assert client.identity == "agent_1"
    assert await server.invoke("whoami", to="agent_1") == server.identity


async def test_unknown_client_key_is_refused_and_runs_nothing(peers: Any) -> None:
    ran = []

    async def spy(request: cl.Request) -> Any:
        ran.append(request)

    server = await peers.enter_async_context(
        cl.Peer(bind="tcp://127.0.0.1:0", authenticator=server_auth(agent_1=CLIENT_KEYS.public))
    )
    server.handle_function("spy", spy)
    stranger = auth.generate_keypair()
    with pytest.raises(cl.AuthenticationError):
        async with cl.Peer(
            connect=server.address, authenticator=client_auth(stranger), connect_timeout=5
        ):
            pass
    assert ran == []
    assert server.peers == frozenset()


async def test_wrong_server_key_is_refused(peers: Any) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind="tcp://127.0.0.1:0", authenticator=server_auth(agent_1=CLIENT_KEYS.public))
    )
    impostor = auth.generate_keypair().public
    with pytest.raises(cl.AuthenticationError):
        async with cl.Peer(
            connect=server.address,
            authenticator=client_auth(server_public=impostor),
            connect_timeout=3,
        ):
            pass


async def plain_handshake_outcome(address: str, frames: list[list[bytes]]) -> tuple[int, bool]:
    """Send ``frames`` from a plain DEALER; return its security handshake's monitor event.

    Also returns whether anything at all arrived on the socket by then (or 0.2 s after a
    successful handshake).
    """
    sock: zmq.Socket[Any] = zmq.Socket(shared_context(), zmq.DEALER)
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(address)
        for parts in frames:
            sock.send_multipart(parts)
        async with asyncio.timeout(5):
            while True:  # the monitor is a socket of the asyncio context: awaitable
                event = parse_monitor_message(await monitor.recv_multipart())["event"]
                if event in HANDSHAKE_OUTCOMES:
                    break
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            await asyncio.sleep(0.2)  # a broken server: let its answer arrive, to show it
        return event, bool(sock.poll(0, zmq.POLLIN))
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)


HANDSHAKE_OUTCOMES = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
}


async def test_plain_client_gets_nothing_from_a_curve_server(peers: Any) -> None:
    ran: list[Any] = []

    async def recording_echo(request: cl.Request) -> Any:
        ran.append(request.body)
        return request.body

    server = await peers.enter_async_context(
        cl.Peer(bind="tcp://127.0.0.1:0", authenticator=server_auth(agent_1=CLIENT_KEYS.public))
    )
    server.handle_function("echo", recording_echo)
    # A plain Peer: ZeroMQ retries the refused handshake, so the Peer waits for a Welcome
    # until connect_timeout, and it never hears a byte from the server.
    client = cl.Peer(connect=server.address, connect_timeout=1)
    with pytest.raises(cl.RPCTimeoutError, match=r"^no handshake from .* within connect_timeout"):
        async with client:
            pass
    assert client.statistics().bytes_in == 0
    # A plain socket that sends a Hello and a Call: ZeroMQ refuses its handshake (NULL
    # against CURVE), and nothing comes back.
    hello = encode(m.Hello(identity="plain", max_body_size=MAX))
    call = encode(m.Call(id=1, method="echo", body=pack_body(MARKER)))
    event, answered = await plain_handshake_outcome(server.address, [hello, call])
    assert event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.Event(event).name
    assert not answered
    assert ran == []
    assert server.peers == frozenset()
    stats = server.statistics()
    assert (stats.calls_in, stats.bytes_in, stats.bytes_out) == (0, 0, 0)


async def test_revoked_key_is_refused_on_its_next_connection(peers: Any) -> None:
    authenticator = server_auth(agent_1=CLIENT_KEYS.public)
    server = await peers.enter_async_context(
        cl.Peer(bind="tcp://127.0.0.1:0", authenticator=authenticator)
    )
    async with cl.Peer(connect=server.address, authenticator=client_auth()):
        pass
    authenticator.revoke(CLIENT_KEYS.public)
    with pytest.raises(cl.AuthenticationError):
        async with cl.Peer(connect=server.address, authenticator=client_auth(), connect_timeout=5):
            pass


async def test_authenticator_types_are_checked() -> None:
    with pytest.raises(TypeError, match="authenticator"):
        cl.Peer(bind="tcp://127.0.0.1:0", authenticator=client_auth())
    with pytest.raises(TypeError, match="authenticator"):
        cl.Peer(connect="tcp://127.0.0.1:1", authenticator=server_auth())


async def test_curve_needs_the_zeromq_transport() -> None:
    with pytest.raises(ValueError, match="CURVE"):
        async with cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), authenticator=server_auth()):
            pass


# -- on the wire ----------------------------------------------------------------------------


class Recorder:
    """A TCP relay on 127.0.0.1 that forwards both ways and keeps every byte it saw."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.captured = bytearray()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.captured += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.create_task(pipe)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Recorder]:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.server.wait_closed()


@pytest.mark.parametrize("curve", [False, True])
async def test_marker_is_visible_in_plaintext_and_absent_under_curve(curve: bool) -> None:
    server_kwargs: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    if curve:
        server_kwargs["authenticator"] = server_auth(agent_1=CLIENT_KEYS.public)
        client_kwargs["authenticator"] = client_auth()
    async with cl.Peer(bind="tcp://127.0.0.1:0", compress=False, **server_kwargs) as server:
        server.handle_function("echo", echo)
        port = int(server.address.rsplit(":", 1)[1])
        async with Recorder(port).running() as relay:
            async with cl.Peer(
                connect=f"tcp://127.0.0.1:{relay.port}", compress=False, **client_kwargs
            ) as client:
                client.handle_function("echo", echo)
                body = {"secret": MARKER, "text": MARKER.decode()}
                assert await client.invoke("echo", body, headers={"t": MARKER}) == body
                assert await server.invoke("echo", MARKER) == MARKER
            captured = bytes(relay.captured)
    assert len(captured) > 200
    assert (MARKER in captured) is not curve
