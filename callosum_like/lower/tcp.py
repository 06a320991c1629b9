"""The plain asyncio TCP transport: length-prefixed messages over asyncio streams.

Theory of operation: every TCP connection carries messages framed by ``wire.framing``. A
bound endpoint (``asyncio.start_server``) numbers each accepted connection; that number is
the remote's key. Each connection has one reader task that feeds a ``FrameDecoder`` and
puts ``Connected``, ``Received`` and finally ``Disconnected`` into the endpoint's bounded
``EventQueue``; a full queue stops the readers and TCP flow control pushes back on the
senders. A framing violation (an oversized frame, a bad count) closes that connection only.

Writes: the first message of a loop iteration is written at once; the rest of the
iteration's messages go out together in one ``write`` at its end (one ``writelines`` when
large frames are among them, which are not copied). A sender waits for ``drain`` only once
that batch or the socket's write buffer is past its high-water mark, so small messages cost
no extra await. Reads feed a ``FrameDecoder``, which parses whole messages straight out
of each chunk read.

An optional ``ssl.SSLContext`` encrypts every connection (server and client side).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from ..addresses import Address, TCPAddress
from ..errors import PeerClosedError, PeerDisconnectedError, ProtocolError
from ..wire.framing import FrameDecoder, FrameEncoder
from .base import (
    CONNECTED_KEY,
    Connected,
    Connection,
    Disconnected,
    EventQueue,
    Frame,
    Received,
    Transport,
)

if TYPE_CHECKING:
    from ..auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = ["TCPTransport"]

log = logging.getLogger(__name__)

#: Bytes asked of the socket per read: large enough to move big bodies in few wakeups.
READ_SIZE: Final = 256 * 1024
#: Write-buffer size above which a sender waits for the socket to drain.
WRITE_HIGH_WATER: Final = 4 * 1024 * 1024
#: Frames from this size on are written without a copy; smaller ones are copied into the
#: batch's one buffer, which costs less than one more item for ``writelines``.
COPY_LIMIT: Final = 16 * 1024


class _Stream:
    """One TCP connection: its writer, its reader task, and its write batch.

    The first message of a loop iteration is written at once, so a lone message waits for
    nothing; the messages sent after it in the same iteration go out together in one write
    at the end of it (one system call instead of one per message). The ``FrameEncoder``
    copies small frames into one buffer and passes frames of ``COPY_LIMIT`` bytes or more
    through without a copy.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.task: asyncio.Task[Any] | None = None
        self._transport = writer.transport
        self._batch = FrameEncoder(COPY_LIMIT)
        self._holding = False  # a message was written this iteration: batch the rest
        self._loop = asyncio.get_running_loop()

    def queue(self, frames: Sequence[Frame]) -> bool:
        """Add one message to the batch; return whether the sender must ``drain()`` now."""
        if self._transport.is_closing():
            raise PeerDisconnectedError("the TCP connection is closed")
        batch = self._batch
        batch.add(frames)
        if not self._holding:  # the first message of this loop iteration leaves at once
            self._holding = True
            self._loop.call_soon(self._release)
            self._flush()
        return (
            len(batch) > WRITE_HIGH_WATER
            or self._transport.get_write_buffer_size() > WRITE_HIGH_WATER
        )

    def _release(self) -> None:
        """The loop iteration ended: write what was sent after its first message."""
        self._holding = False
        self._flush()

    async def drain(self) -> None:
        """Write the batch now and wait until the socket's buffer is below its mark."""
        self._flush()
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise PeerDisconnectedError(f"the TCP connection broke: {exc}") from None

    def _flush(self) -> None:
        pieces = self._batch.data_to_send()
        if not pieces or self._transport.is_closing():
            return
        if len(pieces) == 1:
            self._transport.write(pieces[0])
        else:
            self._transport.writelines(pieces)

    def close(self) -> None:
        self._flush()
        self.writer.close()


class _TCPConnection(Connection):
    def __init__(self, *, bound: bool, max_frame_size: int) -> None:
        self.bound = bound
        self._max_frame_size = max_frame_size
        self._events = EventQueue()
        self._streams: dict[bytes, _Stream] = {}
        self._closed = False
        self._address = ""

    @property
    def local_address(self) -> str:
        """See ``Connection.local_address``."""
        return self._address

    async def _pump(self, key: bytes, reader: asyncio.StreamReader, stream: _Stream) -> None:
        """Read one connection until it ends, then report it gone."""
        decoder = FrameDecoder(self._max_frame_size)
        reason = "closed by the remote"
        try:
            await self._events.put(Connected(key))
            events = self._events
            while data := await reader.read(READ_SIZE):
                for frames in decoder.feed(data):
                    if not events.offer(Received(key, frames)):
                        await events.wait_space()
        except ProtocolError as exc:
            reason = f"framing error: {exc}"
            log.warning("closing TCP connection %r: %s", key, reason)
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
        finally:
            stream.close()
            if self._streams.pop(key, None) is not None:
                await self._events.put(Disconnected(key, reason))

    async def receive(self) -> Received | Connected | Disconnected:
        """See ``Connection.receive``."""
        return await self._events.get()  # type: ignore[return-value]

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``."""
        if self._closed:
            raise PeerClosedError("connection closed")
        stream = self._streams.get(to if self.bound else CONNECTED_KEY)  # type: ignore[arg-type]
        if stream is None:
            raise PeerDisconnectedError(f"no connected remote with key {to!r}")
        if stream.queue(frames):  # no coroutine per message unless the socket pushes back
            await stream.drain()

    async def disconnect(self, peer: bytes) -> None:
        """See ``Connection.disconnect``."""
        stream = self._streams.pop(peer, None)
        if stream is not None:
            stream.close()

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        if self._closed:
            return
        self._closed = True
        self._events.close()
        streams = list(self._streams.values())
        self._streams.clear()
        tasks = [s.task for s in streams if s.task is not None]
        for stream in streams:
            stream.close()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._finish(streams, tasks))

    async def _finish(self, streams: list[_Stream], tasks: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            with contextlib.suppress(Exception):
                await stream.writer.wait_closed()


class _TCPServer(_TCPConnection):
    def __init__(self, max_frame_size: int) -> None:
        super().__init__(bound=True, max_frame_size=max_frame_size)
        self._server: asyncio.Server | None = None
        self._numbers = itertools.count(1)

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, ssl=ssl_context)
        sockname = self._server.sockets[0].getsockname()
        self._address = f"{sockname[0]}:{sockname[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:
            writer.close()
            return
        key = next(self._numbers).to_bytes(8, "big")
        stream = _Stream(writer)
        self._streams[key] = stream
        # Our own task, not asyncio's callback task: closing cancels it, and 3.11's
        # start_server logs an error when its callback task ends cancelled.
        stream.task = asyncio.create_task(self._pump(key, reader, stream))

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        if self._server is not None and not self._closed:
            self._server.close()
        await super().aclose()
        if self._server is not None:
            await self._server.wait_closed()


class _TCPClient(_TCPConnection):
    def __init__(self, max_frame_size: int) -> None:
        super().__init__(bound=False, max_frame_size=max_frame_size)

    async def start(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str | None
    ) -> None:
        try:
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname if ssl_context else None,
            )
        except ssl.SSLError:
            raise  # a certificate problem is clearer as itself
        except OSError as exc:
            raise PeerDisconnectedError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._address = f"{host}:{port}"
        stream = _Stream(writer)
        self._streams[CONNECTED_KEY] = stream
        stream.task = asyncio.create_task(self._pump(CONNECTED_KEY, reader, stream))


class TCPTransport(Transport):
    """Plain asyncio TCP, optionally with TLS.

    Args:
        ssl: An ``ssl.SSLContext``: on a bound peer a server context (set
            ``verify_mode = ssl.CERT_REQUIRED`` and load CA certificates to require client
            certificates); on a connecting peer a client context.
        server_hostname: The name to check the server certificate against, when it differs
            from the host connected to.
    """

    def __init__(
        self, *, ssl: ssl.SSLContext | None = None, server_hostname: str | None = None
    ) -> None:
        if ssl is not None and not isinstance(ssl, _SSLContext):
            raise TypeError("ssl must be an ssl.SSLContext")
        self._ssl = ssl
        self._server_hostname = server_hostname

    async def bind(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractServerAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.bind``."""
        addr = _tcp_address(address, authenticator)
        conn = _TCPServer(max_frame_size)
        await conn.start(addr.host, addr.port, self._ssl)
        return conn

    async def connect(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractClientAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.connect``."""
        addr = _tcp_address(address, authenticator)
        conn = _TCPClient(max_frame_size)
        await conn.start(addr.host, addr.port, self._ssl, self._server_hostname)
        return conn


_SSLContext = ssl.SSLContext


def _tcp_address(address: Address, authenticator: object) -> TCPAddress:
    if not isinstance(address, TCPAddress):
        raise ValueError(f"the TCP transport needs a TCPAddress, not {address!r}")
    if authenticator is not None:
        raise ValueError(
            "authenticator is CURVE, which only the ZeroMQ transport speaks; "
            "secure the TCP transport with TCPTransport(ssl=...)"
        )
    return address
