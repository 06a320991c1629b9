from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import zmq

from callosum_like.addresses import ZeroMQAddress
from callosum_like.lower.base import CONNECTED_KEY, Connected, Connection, Received, Transport
from callosum_like.lower.zeromq import PIPELINE_BATCH, ZeroMQTransport, shared_context
from callosum_like.lower.zeromq_driver import BATCH_SIZE
from callosum_like.wire.framing import framed_size, pack_batch, split_batch

from ..conftest import free_port
from .conformance import (
    WAIT,
    ReconnectingTransportConformance,
    TransportConformance,
    next_event,
)

_names = itertools.count()


class ZeroMQ:
    """What every ZeroMQ conformance class provides, but the address it binds."""

    def transport(self) -> Transport:
        return ZeroMQTransport()

    def connect_address(self, server: Connection) -> Any:
        return ZeroMQAddress(server.local_address)


class TestZeroMQOverTCP(ZeroMQ, ReconnectingTransportConformance):
    def bind_address(self) -> Any:
        return ZeroMQAddress("tcp://127.0.0.1:0")


class TestZeroMQOverIPC(ZeroMQ, ReconnectingTransportConformance):
    def bind_address(self) -> Any:
        path = os.path.join(tempfile.gettempdir(), f"cl-test-{os.getpid()}-{next(_names)}.sock")
        return ZeroMQAddress(f"ipc://{path}")


class TestZeroMQOverInproc(ZeroMQ, TransportConformance):
    # inproc:// has no connection events at all: libzmq's monitor is silent for it, so a
    # connected endpoint neither reports a lost connection nor reconnects: the reconnection
    # tests are not collected for it.
    client_reports_disconnects = False

    def bind_address(self) -> Any:
        return ZeroMQAddress(f"inproc://cl-test-{os.getpid()}-{next(_names)}")


async def receive_raw(sock: zmq.Socket[Any]) -> list[bytes]:
    async with asyncio.timeout(WAIT):
        while not sock.poll(0, zmq.POLLIN):
            await asyncio.sleep(0.01)
    return sock.recv_multipart()


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_hostile_batch_is_dropped_and_counted_and_the_link_goes_on() -> None:
    server = await ZeroMQTransport().bind(ZeroMQAddress("tcp://127.0.0.1:0"), max_frame_size=1024)
    raw: zmq.Socket[Any] = zmq.Socket(shared_context(), zmq.DEALER)
    try:
        raw.connect(server.local_address)
        hostile = [
            [b"", struct.pack("!H", 0)],  # a frame count of 0
            [b"", struct.pack("!HI", 1, 10) + b"short"],  # ends inside a frame
            [b"", b""],  # an envelope with nothing in it
            [b"", b"x", b"y"],  # not a batch, not an escaped message
            [b"", pack_batch([[b"a"], [b"y" * 2000], [b"b"]])],  # one message over the limit
            [b"", b"", b"y" * 2000],  # an escaped message over the limit
            [b"last"],
        ]
        for parts in hostile:
            raw.send_multipart(parts)
        got: list[list[bytes]] = []
        async with asyncio.timeout(WAIT):
            while got[-1:] != [[b"last"]]:
                event = await server.receive()
                if isinstance(event, Received):
                    got.append(event.frames)
        assert got == [[b"a"], [b"b"], [b"last"]]
        assert server.dropped == 6
    finally:
        raw.close(linger=0)
        await server.aclose()


@contextlib.asynccontextmanager
async def to_a_raw_router() -> AsyncIterator[tuple[Connection, zmq.Socket[Any]]]:
    """A connected endpoint of ours, and the raw ROUTER socket it is connected to."""
    raw: zmq.Socket[Any] = zmq.Socket(shared_context(), zmq.ROUTER)
    try:
        port = raw.bind_to_random_port("tcp://127.0.0.1")
        client = await ZeroMQTransport().connect(
            ZeroMQAddress(f"tcp://127.0.0.1:{port}"), max_frame_size=1 << 20
        )
        try:
            await client.send([b"connected?"])  # IMMEDIATE: queued until the pipe is up
            assert (await receive_raw(raw))[1:] == [b"connected?"]
            await asyncio.sleep(0)  # end the loop iteration that sent it
            yield client, raw
        finally:
            await client.aclose()
    finally:
        raw.close(linger=0)


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_small_messages_of_one_iteration_leave_in_few_zeromq_messages() -> None:
    async with to_a_raw_router() as (client, raw):
        for i in range(1 + 3 * PIPELINE_BATCH + 5):
            await client.send([b"h", bytes([i])])
        first = await receive_raw(raw)
        assert first[1:] == [b"h", b"\x00"]  # the first left at once, on its own
        got: list[list[bytes]] = []
        for _ in range(4):  # three full batches at once, the rest at the end of the iteration
            batch = await receive_raw(raw)
            assert batch[1] == b""
            got += split_batch(batch[2])
        assert got == [[b"h", bytes([i])] for i in range(1, 1 + 3 * PIPELINE_BATCH + 5)]


@pytest.mark.timeout(30)
@pytest.mark.asyncio
@pytest.mark.parametrize("frames", [1, 2, 3])
async def test_a_batch_holds_at_most_batch_size_framed_bytes(frames: int) -> None:
    """Each message's framed size counts (the two-frame message's is computed inline).

    Each message is one byte over a quarter of a batch: three fit in one, not four.
    """
    body = b"b" * (BATCH_SIZE // 4 - framed_size([b"h"] * (frames - 1) + [b""]))
    sent = [[b"h"] * (frames - 1) + [body + bytes([i])] for i in range(10)]
    async with to_a_raw_router() as (client, raw):
        for message in sent:
            await client.send(message)
        got = [(await receive_raw(raw))[1:]]  # the first left at once, on its own
        while len(got) < len(sent):
            batch = await receive_raw(raw)
            assert batch[1] == b""
            assert len(batch[2]) <= BATCH_SIZE
            got += split_batch(batch[2])
        assert got == sent


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_large_message_travels_escaped_and_arrives_without_a_copy() -> None:
    big = bytes(range(256)) * 1024
    async with to_a_raw_router() as (client, raw):
        await client.send([b"h", big])
        assert (await receive_raw(raw))[1:] == [b"", b"", b"h", big]
    transport = ZeroMQTransport()
    server = await transport.bind(ZeroMQAddress("tcp://127.0.0.1:0"), max_frame_size=1 << 20)
    try:
        main = await transport.connect(ZeroMQAddress(server.local_address), max_frame_size=1 << 20)
        try:
            await main.send([b"h", big])
            while not isinstance(event := await server.receive(), Received):
                pass
            assert event.frames == [b"h", big]
            assert type(event.frames[0]) is bytes
            assert type(event.frames[1]) is memoryview  # ZeroMQ's buffer, not a copy
        finally:
            await main.aclose()
    finally:
        await server.aclose()


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_new_peer_does_not_hide_the_monitor_events_of_another() -> None:
    """Making a new peer (its socket, its monitor) runs libzmq's commands, which may take
    the wake-up of events already waiting for another peer: they still arrive."""
    transport = ZeroMQTransport()
    server = await transport.bind(ZeroMQAddress("tcp://127.0.0.1:0"), max_frame_size=1024)
    try:
        first = await transport.connect(ZeroMQAddress(server.local_address), max_frame_size=1024)
        quiet: Connection | None = None
        try:
            assert isinstance(await next_event(first), Connected)
            await first.send([b"hello"])
            assert (await next_event(server, Received)).frames == [b"hello"]
            await first.disconnect(CONNECTED_KEY)  # a new connection, reported by its monitor
            # Hold the loop while its events reach the monitors' reader...
            time.sleep(0.3)  # noqa: ASYNC251 - on purpose
            # ... then watch a peer that reports nothing (nobody listens there).
            quiet = await transport.connect(
                ZeroMQAddress(f"tcp://127.0.0.1:{free_port()}"), max_frame_size=1024
            )
            assert isinstance(await next_event(first, Connected), Connected)
        finally:
            await first.aclose()
            if quiet is not None:
                await quiet.aclose()
    finally:
        await server.aclose()
