"""The stream transport over Unix domain sockets: the conformance suite, plain and with TLS,
and what is Unix's own: the socket file (stale ones removed, live ones kept, ours removed on
close) and the checks of addresses and options.

Socket files live under pytest's ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

import pytest
import trustme

from callosum_like.addresses import TCPAddress, UnixAddress
from callosum_like.lower.base import Connected, Connection, Disconnected, Received, Transport
from callosum_like.lower.unix import UnixTransport

from .conformance import (
    MAX_FRAME,
    ReconnectingTransportConformance,
    next_event,
    nothing_arrives,
)

pytestmark = pytest.mark.timeout(30)


class Unix:
    """Each test binds fresh socket paths in its own temporary directory."""

    @pytest.fixture(autouse=True)
    def _socket_dir(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.names = itertools.count()

    def bind_address(self) -> Any:
        return UnixAddress(self.dir / f"s{next(self.names)}.sock")

    def connect_address(self, server: Connection) -> Any:
        return UnixAddress(server.local_address)


class TestUnixTransport(Unix, ReconnectingTransportConformance):
    def transport(self) -> Transport:
        return UnixTransport()


class ServerAndClient(Transport):
    """Binds with one transport and connects with another: TLS needs a context per side."""

    def __init__(self, server: Transport, client: Transport) -> None:
        self._server = server
        self._client = client

    async def bind(self, address: Any, **options: Any) -> Connection:
        return await self._server.bind(address, **options)

    async def connect(self, address: Any, **options: Any) -> Connection:
        return await self._client.connect(address, **options)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("callosum.test").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return server, client


class TestUnixTransportOverTLS(Unix, ReconnectingTransportConformance):
    @pytest.fixture(autouse=True)
    def _contexts(self, ca: trustme.CA) -> None:
        self.server_context, self.client_context = tls_contexts(ca)

    def transport(self) -> Transport:
        return ServerAndClient(
            UnixTransport(ssl=self.server_context),
            UnixTransport(ssl=self.client_context, server_hostname="callosum.test"),
        )


def leave_a_stale_socket(path: Path) -> None:
    """What a process killed while bound leaves behind: a socket file nobody listens at."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    sock.close()  # the file stays
    assert stat.S_ISSOCK(path.stat().st_mode)


async def say_hello(server: Connection, path: Path) -> None:
    """A client connects to ``path`` and its message reaches ``server``."""
    client = await UnixTransport(reconnect=False).connect(
        UnixAddress(path), max_frame_size=MAX_FRAME
    )
    try:
        await client.send([b"hello"])
        assert isinstance(await next_event(server), Connected)
        assert (await next_event(server, Received)).frames == [b"hello"]
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_bind_removes_a_stale_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    leave_a_stale_socket(path)
    with pytest.raises(ConnectionRefusedError):  # nobody serves it: that is what stale means
        await asyncio.get_running_loop().create_unix_connection(asyncio.Protocol, str(path))
    server = await UnixTransport().bind(UnixAddress(path), max_frame_size=MAX_FRAME)
    try:
        assert server.local_address == str(path)
        await say_hello(server, path)
    finally:
        await server.aclose()


@pytest.mark.asyncio
async def test_bind_does_not_take_a_path_another_endpoint_serves(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    server = await UnixTransport().bind(UnixAddress(path), max_frame_size=MAX_FRAME)
    try:
        with pytest.raises(OSError, match="another endpoint serves") as caught:
            await UnixTransport().bind(UnixAddress(path), max_frame_size=MAX_FRAME)
        assert caught.value.errno == errno.EADDRINUSE
        await say_hello(server, path)  # the first one still serves its path
    finally:
        await server.aclose()


@pytest.mark.asyncio
async def test_bind_leaves_a_file_that_is_not_a_socket_alone(tmp_path: Path) -> None:
    path = tmp_path / "data.sock"
    path.write_bytes(b"precious")
    with pytest.raises(OSError, match="in use"):
        await UnixTransport().bind(UnixAddress(path), max_frame_size=MAX_FRAME)
    assert path.read_bytes() == b"precious"


@pytest.mark.asyncio
async def test_close_removes_the_socket_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.sock"
    server = await UnixTransport().bind(UnixAddress(path), max_frame_size=MAX_FRAME)
    assert stat.S_ISSOCK(path.stat().st_mode)
    await server.aclose()
    assert not path.exists()
    await server.aclose()  # idempotent, with the file gone


@pytest.mark.asyncio
async def test_close_keeps_a_socket_file_another_endpoint_bound_since(tmp_path: Path) -> None:
    path = tmp_path / "shared.sock"
    first = await UnixTransport().bind(UnixAddress(path), max_frame_size=MAX_FRAME)
    try:
        os.unlink(path)  # someone removed ours, and a second endpoint took the path
        second = await UnixTransport().bind(UnixAddress(path), max_frame_size=MAX_FRAME)
        try:
            await first.aclose()
            assert stat.S_ISSOCK(path.stat().st_mode)
            await say_hello(second, path)
        finally:
            await second.aclose()
        assert not path.exists()
    finally:
        await first.aclose()


@pytest.mark.asyncio
async def test_tls_client_refuses_a_server_it_does_not_trust(
    tmp_path: Path, ca: trustme.CA
) -> None:
    server_context, _ = tls_contexts(trustme.CA())  # another CA
    _, client_context = tls_contexts(ca)
    path = tmp_path / "untrusted.sock"
    server = await UnixTransport(ssl=server_context).bind(
        UnixAddress(path), max_frame_size=MAX_FRAME
    )
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await UnixTransport(ssl=client_context, server_hostname="callosum.test").connect(
                UnixAddress(path), max_frame_size=MAX_FRAME
            )
    finally:
        await server.aclose()


@pytest.mark.asyncio
async def test_tls_server_takes_nothing_from_a_plain_client(tmp_path: Path, ca: trustme.CA) -> None:
    server_context, _ = tls_contexts(ca)
    path = tmp_path / "tls-only.sock"
    server = await UnixTransport(ssl=server_context).bind(
        UnixAddress(path), max_frame_size=MAX_FRAME
    )
    try:
        plain = await UnixTransport(reconnect=False).connect(
            UnixAddress(path), max_frame_size=MAX_FRAME
        )
        try:
            assert isinstance(await next_event(plain), Connected)
            await plain.send([b"in clear"])  # no TLS handshake: the server hangs up
            assert isinstance(await next_event(plain), Disconnected)
        finally:
            await plain.aclose()
        assert await nothing_arrives(server)  # no Connected, no Received
    finally:
        await server.aclose()


@pytest.mark.asyncio
async def test_addresses_and_options_are_checked(tmp_path: Path, ca: trustme.CA) -> None:
    transport = UnixTransport()
    with pytest.raises(ValueError, match="needs a UnixAddress"):
        await transport.bind(TCPAddress("127.0.0.1", 0), max_frame_size=MAX_FRAME)
    with pytest.raises(ValueError, match=r"UnixTransport\(ssl=...\)"):
        await transport.bind(
            UnixAddress(tmp_path / "x.sock"), max_frame_size=MAX_FRAME, authenticator=object()
        )  # type: ignore[arg-type]
    server_context, client_context = tls_contexts(ca)
    server = await UnixTransport(ssl=server_context).bind(
        UnixAddress(tmp_path / "tls.sock"), max_frame_size=MAX_FRAME
    )
    try:
        with pytest.raises(ValueError, match="server_hostname is required"):
            await UnixTransport(ssl=client_context).connect(
                UnixAddress(tmp_path / "tls.sock"), max_frame_size=MAX_FRAME
            )
    finally:
        await server.aclose()


def test_unix_address_takes_str_and_path_like(tmp_path: Path) -> None:
    assert UnixAddress(tmp_path / "a.sock") == UnixAddress(str(tmp_path / "a.sock"))
    assert str(UnixAddress("/run/x.sock")) == "/run/x.sock"
    with pytest.raises(ValueError, match="non-empty"):
        UnixAddress("")
    with pytest.raises(ValueError, match="NUL"):
        UnixAddress("a\0b")
    with pytest.raises(TypeError, match="path must be"):
        UnixAddress(b"/run/x.sock")  # type: ignore[arg-type]
