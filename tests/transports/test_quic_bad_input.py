"""Bad input to a bound QUIC endpoint: dropped or refused, counted, and good peers served.

Garbage datagrams, floods of Initial packets from many source ports (with and without
address validation by Retry), streams that never finish their message, and a frame over
``max_frame_size``: each costs the sender, never the other remotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aioquic.asyncio import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from callosum_like.addresses import QUICAddress
from callosum_like.lower.base import Connection, Disconnected, Received
from callosum_like.lower.lanes import LaneSender
from callosum_like.lower.quic import ALPN, QUICTransport
from callosum_like.wire.framing import encode_message

from ..certs import quic_client_options, quic_server_options
from .conformance import next_event

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

MAX_FRAME = 64 * 1024


@contextlib.asynccontextmanager
async def served(**options: Any) -> AsyncIterator[tuple[Any, Connection, tuple[str, int]]]:
    """A bound QUIC endpoint, a good client of it (known to it), and its UDP address."""
    server: Any = await QUICTransport(**quic_server_options(), **options).bind(
        QUICAddress("127.0.0.1", 0), max_frame_size=MAX_FRAME
    )
    host, port = server.local_address.rsplit(":", 1)
    good = await QUICTransport(**quic_client_options()).connect(
        QUICAddress(host, int(port)), max_frame_size=MAX_FRAME
    )
    try:
        await good.send([b"hello"])
        assert (await next_event(server, Received)).frames == [b"hello"]
        yield server, good, (host, int(port))
    finally:
        await good.aclose()
        await server.aclose()


async def still_served(server: Connection, good: Connection, tag: bytes) -> None:
    await good.send([tag])
    event = await next_event(server, Received)
    assert event.frames == [tag]
    await server.send([tag + b"!"], to=event.peer)
    assert (await next_event(good, Received)).frames == [tag + b"!"]


def initials(count: int, target: tuple[str, int]) -> list[tuple[socket.socket, bytes]]:
    """``count`` new clients' first datagrams (full-size Initials), each from its own port."""
    out = []
    for _ in range(count):
        config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="localhost")
        quic = QuicConnection(configuration=config)
        quic.connect(target, now=0.0)
        [(datagram, _)] = quic.datagrams_to_send(now=0.0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        out.append((sock, datagram))
    return out


async def test_garbage_datagrams_are_dropped_and_counted() -> None:
    async with served() as (server, good, target):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(50):
                sock.sendto(os.urandom(1 + i * 29), target)
            sock.sendto(b"\x40" + bytes(30), target)  # a short header for no connection
        await still_served(server, good, b"fine")
        async with asyncio.timeout(5):
            while server.dropped < 51:
                await asyncio.sleep(0.01)
        assert server.handshakes == 0


async def test_a_flood_of_initials_gets_retries_and_leaves_no_state() -> None:
    async with served() as (server, good, target):
        flood = initials(200, target)
        try:
            for sock, datagram in flood:
                sock.sendto(datagram, target)
            await still_served(server, good, b"during")
            answers = []
            for sock, _ in flood:  # answered with a Retry (a token), no connection state
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answers.append(sock.recv(2048))
            # (The kernel may drop part of a burst this size before the server reads it.)
            assert len(answers) > len(flood) // 4
            assert all(a[0] & 0xF0 == 0xF0 for a in answers), "a Retry: long header, type 3"
            assert server.handshakes == 0
            late = await QUICTransport(**quic_client_options()).connect(
                QUICAddress(*target), max_frame_size=MAX_FRAME
            )
            await late.aclose()  # a new good client gets in too
        finally:
            for sock, _ in flood:
                sock.close()


async def test_handshakes_in_progress_are_bounded() -> None:
    async with served(retry=False, max_handshakes=8) as (server, good, target):
        flood = initials(40, target)
        try:
            for sock, datagram in flood:
                sock.sendto(datagram, target)
            await still_served(server, good, b"during")
            async with asyncio.timeout(5):
                while server.dropped < 32:
                    await asyncio.sleep(0.01)
            assert server.handshakes == 8
        finally:
            for sock, _ in flood:
                sock.close()


class RawQUIC(QuicConnectionProtocol):
    """A QUIC client that writes whatever bytes the test wants on its streams."""

    def write(self, data: bytes, *, end: bool = False) -> None:
        stream = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(stream, data, end_stream=end)
        self.transmit()


def raw_configuration() -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="127.0.0.1")
    config.load_verify_locations(cafile=quic_client_options()["cafile"])
    return config


def stamped(frames: list[bytes]) -> bytes:
    return b"".join(encode_message([LaneSender().stamp(False), *frames]))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(stamped([b"x" * (MAX_FRAME + 1)]), id="a frame over max_frame_size"),
        pytest.param(stamped([b"y" * 100])[:50], id="a stream that ends inside a message"),
        pytest.param(b"\x00\x01\x00\x00\x00\x01z", id="a message without a stamp"),
    ],
)
async def test_a_bad_stream_costs_its_connection_only(data: bytes) -> None:
    async with served() as (server, good, target):
        async with quic_connect(
            *target, configuration=raw_configuration(), create_protocol=RawQUIC
        ) as raw:
            assert isinstance(raw, RawQUIC)
            raw.write(stamped([b"first"]))
            first = await next_event(server, Received)
            assert first.frames == [b"first"]
            raw.write(data, end=True)
            gone = await next_event(server, Disconnected)
            assert gone.peer == first.peer
            assert "protocol violation" in gone.reason
        await still_served(server, good, b"after")
        assert server.dropped == 1


async def test_a_stream_that_never_finishes_holds_at_most_one_frame() -> None:
    """A message announced and never completed: held (as far as it came) until the
    connection ends, then counted as dropped; the others are served meanwhile."""
    async with served() as (server, good, target):
        async with quic_connect(
            *target, configuration=raw_configuration(), create_protocol=RawQUIC
        ) as raw:
            assert isinstance(raw, RawQUIC)
            raw.write(stamped([b"z" * MAX_FRAME])[: MAX_FRAME // 2])  # never finished
            await still_served(server, good, b"meanwhile")
        gone = await next_event(server, Disconnected)
        assert gone.reason
        await still_served(server, good, b"after")


async def test_unfinished_messages_over_many_streams_are_bounded() -> None:
    """Each stream may hold one unfinished message; together at most 2 x max_frame_size."""
    async with (
        served() as (server, good, target),
        quic_connect(*target, configuration=raw_configuration(), create_protocol=RawQUIC) as raw,
    ):
        assert isinstance(raw, RawQUIC)
        raw.write(stamped([b"first"]))
        first = await next_event(server, Received)
        for _ in range(4):  # 4 x 0.9 frames, never finished
            raw.write(stamped([b"w" * MAX_FRAME])[: MAX_FRAME * 9 // 10])
        gone = await next_event(server, Disconnected)
        assert gone.peer == first.peer
        assert "unfinished messages" in gone.reason
        await still_served(server, good, b"after")
