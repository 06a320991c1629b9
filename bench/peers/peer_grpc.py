"""grpc.aio with a generic handler on raw bytes (no protobuf), as a user would tune it.

Run by ``python -m callosum_like bench`` as ``peer_grpc.py server|client``. ``/bench.Bench/Echo``
is a unary-unary method returning its request; ``/bench.Bench/Stream`` is a unary-stream
method yielding chunks (gRPC's native server streaming, with HTTP/2 flow control). No
serializers are given, so requests and replies are the raw bytes. The message size limits
are raised to 64 MiB (the default 4 MiB would refuse the 16 MiB echoes).
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import grpc.aio

from callosum_like.tools.bench.children import peer_main
from callosum_like.tools.bench.measure import Payload
from callosum_like.tools.child import announce

STREAM_REQUEST: Final = struct.Struct("!QQ")  # total bytes, chunk bytes
OPTIONS: Final = [
    ("grpc.max_send_message_length", 64 * 2**20),
    ("grpc.max_receive_message_length", 64 * 2**20),
]
ECHO: Final = "/bench.Bench/Echo"
STREAM: Final = "/bench.Bench/Stream"


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    total, chunk = STREAM_REQUEST.unpack(request)
    body = os.urandom(chunk)
    for _ in range(total // chunk):
        yield body


async def serve() -> None:
    """Serve on 127.0.0.1, port 0, until the parent closes our stdin."""
    server = grpc.aio.server(options=OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await announce(f"127.0.0.1:{port}")
    finally:
        await server.stop(None)


class Client:
    """Calls on one channel."""

    stream_kind = "stream"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._echo = channel.unary_unary(ECHO)
        self._stream = channel.unary_stream(STREAM)

    async def echo(self, body: bytes) -> Payload:
        """Send ``body``; return the echo."""
        reply: bytes = await self._echo(body)
        return reply

    async def stream(self, size: int, chunk_size: int) -> AsyncIterator[Payload]:
        """Ask for ``size`` bytes in chunks; yield each chunk."""
        async for chunk in self._stream(STREAM_REQUEST.pack(size, chunk_size)):
            yield chunk


@contextlib.asynccontextmanager
async def connect(address: str) -> AsyncIterator[Client]:
    """A client on a channel to ``HOST:PORT``."""
    async with grpc.aio.insecure_channel(address, options=OPTIONS) as channel:
        await channel.channel_ready()
        yield Client(channel)


if __name__ == "__main__":
    sys.exit(peer_main(serve, connect))
