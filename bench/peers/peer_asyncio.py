"""The floor over plain TCP: a length-prefixed echo on raw asyncio streams.

Run by ``python -m callosum_like bench`` as ``peer_asyncio.py server|client``. A frame is a
13-byte header (op ``E`` echo or ``S`` stream, a 4-byte tag, an 8-byte length) and a body.
The server answers frames one at a time, in order, as they arrive (no task per request);
a stream request is answered with ``S`` frames of one chunk each and an empty one at the end,
written with ``drain()`` so TCP's own flow control bounds memory. The client matches replies
to calls by tag, so many calls can be in flight on the one connection.
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

from callosum_like.tools.bench.children import peer_main
from callosum_like.tools.bench.measure import Payload
from callosum_like.tools.child import announce

HEADER: Final = struct.Struct("!cIQ")  # op, tag, body length
STREAM_REQUEST: Final = struct.Struct("!QQ")  # total bytes, chunk bytes
#: Chunks a stream consumer may have queued before the reader stops reading the socket.
STREAM_WINDOW: Final = 16


async def serve() -> None:
    """Echo on 127.0.0.1, port 0, until the parent closes our stdin."""
    server = await asyncio.start_server(_handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    async with server:
        await announce(f"{host}:{port}")


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            header = await reader.readexactly(HEADER.size)
            op, tag, size = HEADER.unpack(header)
            body = await reader.readexactly(size)
            if op == b"S":
                await _send_stream(writer, tag, *STREAM_REQUEST.unpack(body))
                continue
            writer.write(header)
            writer.write(body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _send_stream(writer: asyncio.StreamWriter, tag: int, total: int, chunk: int) -> None:
    body = os.urandom(chunk)
    header = HEADER.pack(b"S", tag, chunk)
    for _ in range(total // chunk):
        writer.write(header)
        writer.write(body)
        await writer.drain()
    writer.write(HEADER.pack(b"S", tag, 0))
    await writer.drain()


class Client:
    """Calls over one connection, matched to replies by tag."""

    stream_kind = "stream"

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._tags = itertools.count()
        self._calls: dict[int, asyncio.Future[bytes]] = {}
        self._streams: dict[int, asyncio.Queue[bytes]] = {}
        self._task = asyncio.create_task(self._read())

    async def echo(self, body: bytes) -> Payload:
        """Send ``body``; return the echo."""
        tag = next(self._tags)
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._calls[tag] = reply
        self._writer.write(HEADER.pack(b"E", tag, len(body)))
        self._writer.write(body)
        await self._writer.drain()
        return await reply

    async def stream(self, size: int, chunk_size: int) -> AsyncIterator[Payload]:
        """Ask for ``size`` bytes in chunks; yield each chunk."""
        tag = next(self._tags)
        queue = self._streams[tag] = asyncio.Queue(STREAM_WINDOW)
        self._writer.write(HEADER.pack(b"S", tag, STREAM_REQUEST.size))
        self._writer.write(STREAM_REQUEST.pack(size, chunk_size))
        while chunk := await queue.get():
            yield chunk
        del self._streams[tag]

    async def _read(self) -> None:
        while True:
            op, tag, size = HEADER.unpack(await self._reader.readexactly(HEADER.size))
            body = await self._reader.readexactly(size) if size else b""
            if op == b"S":
                await self._streams[tag].put(body)
            else:
                self._calls.pop(tag).set_result(body)

    async def aclose(self) -> None:
        """Stop reading and close the connection."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.IncompleteReadError):
            await self._task
        self._writer.close()
        await self._writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(address: str) -> AsyncIterator[Client]:
    """A client connected to ``HOST:PORT``."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    client = Client(reader, writer)
    try:
        yield client
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(peer_main(serve, connect))
