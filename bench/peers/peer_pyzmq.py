"""The floor over ZeroMQ: a raw pyzmq DEALER/ROUTER echo on asyncio.

Run by ``python -m callosum_like bench`` as ``peer_pyzmq.py server|client``. The client
(DEALER) sends ``[op, tag, body]``; the server (ROUTER) answers each message as it arrives,
echoing the very frames it received (``copy=False``: no copies of large bodies). For a
stream (op ``S``) the server sends one message per chunk and an empty one at the end. Flow
control comes from ZeroMQ itself: ``ROUTER_MANDATORY`` makes a send to a full peer wait (in
pyzmq's asyncio socket) instead of dropping, and small high-water marks bound what is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import struct
import sys
from collections.abc import AsyncIterator
from typing import Final

import zmq
import zmq.asyncio

from callosum_like.tools.bench.children import peer_main
from callosum_like.tools.bench.measure import Payload
from callosum_like.tools.child import announce

STREAM_REQUEST: Final = struct.Struct("!QQ")  # total bytes, chunk bytes
#: Messages queued per direction before a sender waits; bounds a stream's buffering.
HIGH_WATER_MARK: Final = 16


async def serve() -> None:
    """Echo on 127.0.0.1, port 0, until the parent closes our stdin."""
    context = zmq.asyncio.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    task = asyncio.create_task(_answer(sock))
    try:
        await announce(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        context.destroy(linger=0)


async def _answer(sock: zmq.asyncio.Socket) -> None:
    while True:
        frames = await sock.recv_multipart(copy=False)
        if frames[1].bytes == b"S":
            await _send_stream(sock, frames[0], frames[2], *STREAM_REQUEST.unpack(frames[3].bytes))
        else:
            await sock.send_multipart(frames, copy=False)


async def _send_stream(
    sock: zmq.asyncio.Socket, peer: zmq.Frame, tag: zmq.Frame, total: int, chunk: int
) -> None:
    body = os.urandom(chunk)
    for _ in range(total // chunk):
        await sock.send_multipart([peer, b"S", tag, body], copy=False)
    await sock.send_multipart([peer, b"S", tag, b""])


class Client:
    """Calls over one DEALER socket, matched to replies by tag."""

    stream_kind = "stream"

    def __init__(self, context: zmq.asyncio.Context, address: str) -> None:
        self._sock = context.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)
        self._tags = itertools.count()
        self._calls: dict[bytes, asyncio.Future[Payload]] = {}
        self._streams: dict[bytes, asyncio.Queue[Payload]] = {}
        self._task = asyncio.create_task(self._read())

    async def echo(self, body: bytes) -> Payload:
        """Send ``body``; return the echo (a view of the received frame)."""
        tag = next(self._tags).to_bytes(8, "big")
        reply: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
        self._calls[tag] = reply
        await self._sock.send_multipart([b"E", tag, body], copy=False)
        return await reply

    async def stream(self, size: int, chunk_size: int) -> AsyncIterator[Payload]:
        """Ask for ``size`` bytes in chunks; yield each chunk."""
        tag = next(self._tags).to_bytes(8, "big")
        queue = self._streams[tag] = asyncio.Queue(HIGH_WATER_MARK)
        await self._sock.send_multipart([b"S", tag, STREAM_REQUEST.pack(size, chunk_size)])
        while len(chunk := await queue.get()):
            yield chunk
        del self._streams[tag]

    async def _read(self) -> None:
        while True:
            op, tag, body = await self._sock.recv_multipart(copy=False)
            if op.bytes == b"S":
                await self._streams[tag.bytes].put(body.buffer)
            else:
                self._calls.pop(tag.bytes).set_result(body.buffer)

    async def aclose(self) -> None:
        """Stop reading and close the socket."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sock.close()


@contextlib.asynccontextmanager
async def connect(address: str) -> AsyncIterator[Client]:
    """A client connected to the ZeroMQ endpoint ``address``."""
    context = zmq.asyncio.Context()
    client = Client(context, address)
    try:
        yield client
    finally:
        await client.aclose()
        context.destroy(linger=0)


if __name__ == "__main__":
    sys.exit(peer_main(serve, connect))
