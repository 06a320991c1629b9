"""callosum 1.0.3 over ZeroMQ with msgpack bodies, as its README sets it up.

Run by ``python -m callosum_like bench`` as ``peer_callosum.py server|client``. The server
is a ``callosum.rpc.Peer`` bound with ``ZeroMQRPCTransport`` and ``mpackb``/``munpackb`` as
serializers, with its default scheduler and options; the client is the same on the
connecting side. callosum has no streams: W5 is emulated by its nearest equivalent, the
client pulling the data with one ``chunk`` call (1 MiB reply) after another.

callosum does not report the port it bound (port ``*``); the server reads it from the
transport's socket (``LAST_ENDPOINT``), a private attribute.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

import zmq
from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.rpc import Peer
from callosum.serialize import mpackb, munpackb

from callosum_like.tools.bench.children import CALL_TIMEOUT, peer_main
from callosum_like.tools.bench.measure import Payload
from callosum_like.tools.child import announce

CHUNK: Final = 2**20


async def _echo(request: Any) -> Any:
    return request.body


async def serve() -> None:
    """Serve on 127.0.0.1, port 0, until the parent closes our stdin."""
    chunk = os.urandom(CHUNK)

    async def pull(request: Any) -> bytes:
        return chunk[: request.body]

    peer = Peer(
        bind=ZeroMQAddress("tcp://127.0.0.1:*"),
        transport=ZeroMQRPCTransport,
        serializer=mpackb,
        deserializer=munpackb,
    )
    peer.handle_function("echo", _echo)
    peer.handle_function("chunk", pull)
    async with peer:
        # callosum keeps the bound port to itself: ask its socket (no public way to)
        sock = peer._transport._sock  # type: ignore[attr-defined]  # noqa: SLF001
        await announce(sock.getsockopt_string(zmq.LAST_ENDPOINT))


class Client:
    """Calls through one connecting callosum Peer."""

    stream_kind = "emulated: sequential chunk calls"

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    async def echo(self, body: bytes) -> Payload:
        """Send ``body``; return the echo."""
        reply: bytes = await self._peer.invoke("echo", body)
        return reply

    async def stream(self, size: int, chunk_size: int) -> AsyncIterator[Payload]:
        """Pull ``size`` bytes with one call per chunk; yield each chunk."""
        for _ in range(size // chunk_size):
            chunk: bytes = await self._peer.invoke("chunk", chunk_size)
            yield chunk


@contextlib.asynccontextmanager
async def connect(address: str) -> AsyncIterator[Client]:
    """A client connected to the ZeroMQ endpoint ``address``."""
    peer = Peer(
        connect=ZeroMQAddress(address),
        transport=ZeroMQRPCTransport,
        serializer=mpackb,
        deserializer=munpackb,
        invoke_timeout=CALL_TIMEOUT,
    )
    async with peer:
        yield Client(peer)


if __name__ == "__main__":
    sys.exit(peer_main(serve, connect))
