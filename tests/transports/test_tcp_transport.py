from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callosum_like.addresses import TCPAddress
from callosum_like.errors import PeerDisconnectedError
from callosum_like.lower.base import Connection, Transport
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
