"""A TCP proxy on 127.0.0.1 that tests break on purpose.

``cut()`` aborts the connections through it (both sides, or only the client's, so that the
server holds a dead connection without knowing it); while ``blocked``, new connections are
closed as soon as they arrive, as if the network were down. ZeroMQ's ZMTP and the stream
transport both run through it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import callosum_like as cl

from .conftest import kind_of


class Proxy:
    """Forwards each connection to ``(host, port)`` until told otherwise."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._kept: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.blocked = False
        self.connections = 0  # made through the proxy so far

    @classmethod
    def to(cls, peer: cl.Peer) -> Proxy:
        """A proxy to a bound ``peer`` (ZeroMQ ``tcp://`` or the TCP transport)."""
        if kind_of(peer.address) not in ("zeromq", "tcp"):  # mark such tests PROXY_TRANSPORTS
            raise ValueError(f"the test proxy relays TCP streams, not {peer.address!r}")
        host, port = peer.address.removeprefix("tcp://").rsplit(":", 1)
        return cls(host, int(port))

    def address(self, kind: str) -> Any:
        """Where a client of ``kind`` reaches the proxy."""
        if kind == "zeromq":
            return f"tcp://127.0.0.1:{self.port}"
        return cl.TCPAddress("127.0.0.1", self.port)

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for client, server in self._pairs:
            client.transport.abort()
            server.transport.abort()
        for writer in self._kept:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self, *, server_side: bool = True) -> int:
        """Abort every connection through the proxy; return how many.

        Args:
            server_side: Abort the server's side too; if not, it stays open and silent.
        """
        count = len(self._pairs)
        for client, server in self._pairs:
            client.transport.abort()
            if server_side:
                server.transport.abort()
            else:
                self._kept.append(server)
        self._pairs.clear()
        return count

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._pairs.append((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        if sink not in self._kept:  # a side that closed closes the other (unless held)
            sink.transport.abort()
