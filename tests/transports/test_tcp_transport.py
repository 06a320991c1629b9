from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest

from callosum_like.addresses import TCPAddress
from callosum_like.errors import PeerDisconnectedError
from callosum_like.lower.base import Connected, Connection, Transport
from callosum_like.lower.stream import FLUSH_SIZE
from callosum_like.lower.tcp import TCPTransport

from .conformance import ReconnectingTransportConformance


class TestTCPTransport(ReconnectingTransportConformance):
    def transport(self) -> Transport:
        return TCPTransport()

    def bind_address(self) -> Any:
        return TCPAddress("127.0.0.1", 0)

    def connect_address(self, server: Connection) -> Any:
        host, port = server.local_address.rsplit(":", 1)
        return TCPAddress(host, int(port))


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_sender_waiting_for_room_fails_when_the_connection_ends() -> None:
    """A server that reads nothing fills every buffer; its going away wakes the waiting send."""
    transport = TCPTransport(reconnect=False)
    server = await transport.bind(TCPAddress("127.0.0.1", 0), max_frame_size=2**20)
    host, port = server.local_address.rsplit(":", 1)
    client = await transport.connect(TCPAddress(host, int(port)), max_frame_size=2**20)
    try:
        chunk = b"x" * 2**16

        async def flood() -> None:
            while True:  # the server never receives: its queue fills, then the sockets
                await client.send([chunk])

        sender = asyncio.create_task(flood())
        done, _ = await asyncio.wait([sender], timeout=1.0)
        assert not done, "the sender should be waiting for room by now"
        await server.aclose()
        async with asyncio.timeout(5):
            with pytest.raises(PeerDisconnectedError, match="TCP connection"):
                await sender
    finally:
        await client.aclose()
        await server.aclose()


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_small_messages_of_one_iteration_leave_in_batches_before_its_end() -> None:
    """The remote gets a long run of small messages while the sender is still building it."""
    transport = TCPTransport(reconnect=False)
    server = await transport.bind(TCPAddress("127.0.0.1", 0), max_frame_size=2**20)
    host, port = server.local_address.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=5)
    try:
        event = await asyncio.wait_for(server.receive(), 5)
        assert isinstance(event, Connected)
        message = [b"h" * 20, b"b" * 64]
        for _ in range(200):  # one loop iteration: nothing here lets the loop run
            assert server.post(message, to=event.peer) is None
        raw.settimeout(0.5)
        arrived = b""
        with contextlib.suppress(TimeoutError):
            while len(arrived) < 4 * FLUSH_SIZE:
                arrived += raw.recv(65536)
        # Before, only the iteration's first message had left (the rest waited for its end).
        assert len(arrived) >= 4 * FLUSH_SIZE
    finally:
        raw.close()
        await server.aclose()
