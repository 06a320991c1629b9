"""The floor over NATS: a raw nats-py request-reply echo through the same local nats-server.

Run by ``python -m callosum_like bench`` as ``peer_nats.py server|client``, with the
server's URL in ``CALLOSUM_LIKE_NATS_URL`` (the benchmark starts the server). The server
subscribes to a subject of its own and publishes each request's payload back to its reply
subject; the client calls with ``nc.request`` (nats-py's shared reply inbox), so W2's 64
calls in flight are 64 concurrent requests. Bodies over the server's ``max_payload`` (1 MiB
by default) cannot be sent at all, so W3-16MiB and W4 do not apply to it
(``System.max_body_size``); there are no streams (W5 is skipped).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import nats

from callosum_like.tools.bench.children import CALL_TIMEOUT, peer_main
from callosum_like.tools.bench.measure import Payload
from callosum_like.tools.child import NATS_URL_VARIABLE, announce


async def serve() -> None:
    """Echo on a subject of our own until the parent closes our stdin."""
    url = os.environ[NATS_URL_VARIABLE]
    client = await nats.connect(url)
    subject = f"raw-echo-{os.getpid()}"

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    try:
        await client.subscribe(subject, cb=echo)
        await announce(f"{url}/{subject}")
    finally:
        await client.close()


class Client:
    """Requests to the echo subject."""

    stream_kind = ""

    def __init__(self, client: Any, subject: str) -> None:
        self._client = client
        self._subject = subject

    async def echo(self, body: bytes) -> Payload:
        """Send ``body`` as a request; return the reply's payload."""
        reply = await self._client.request(self._subject, body, timeout=CALL_TIMEOUT)
        data: bytes = reply.data
        return data

    async def stream(self, size: int, chunk_size: int) -> AsyncIterator[Payload]:
        """No streams over raw request-reply (never called: ``stream_kind`` is empty)."""
        raise NotImplementedError
        yield b""  # pragma: no cover


@contextlib.asynccontextmanager
async def connect(address: str) -> AsyncIterator[Client]:
    """A client of the echo at ``address`` (``nats://host:port/subject``)."""
    url, subject = address.rsplit("/", 1)
    client = await nats.connect(url)
    try:
        yield Client(client, subject)
    finally:
        await client.close()


if __name__ == "__main__":
    sys.exit(peer_main(serve, connect))
