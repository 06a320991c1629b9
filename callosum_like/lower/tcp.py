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

Slow consumers (bound side): one remote that does not read what we send must neither stall
the others nor grow our memory. So on a bound endpoint a sender never waits for one remote;
instead, while a remote's unsent output is over ``WRITE_HIGH_WATER``, its reader stops
reading (it cannot hand us more work, and TCP pushes back on it). A remote is dropped, as
``Disconnected(slow=True)``, when its unsent output passes ``max_unsent_size`` or when it
reads none of it for ``slow_remote_timeout`` seconds. The connected side keeps the plain
backpressure (its senders wait): it has one remote, and its reader never stops, so the two
sides cannot wait on each other.

An optional ``ssl.SSLContext`` encrypts every connection (server and client side).

Reconnection (connected side): once an established connection is lost, the client reports
``Disconnected``, then tries again after ``reconnect_interval`` seconds, doubling the wait
after each failed attempt up to ``reconnect_max_interval`` (each wait jittered by +-50 %, so
that hundreds of agents whose manager restarted do not all knock at once), until it succeeds
(``Connected`` again, and the Peer re-handshakes) or the connection is closed. Only the first
connect fails fast, from ``Transport.connect``. ``disconnect(CONNECTED_KEY)`` (the Peer's
heartbeat gave up, or the remote said Goodbye) aborts the current connection and reconnects
the same way, without a ``Disconnected`` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..addresses import Address, TCPAddress
from ..errors import PeerClosedError, PeerDisconnectedError, ProtocolError
from ..stats import DropLog
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
    check_reconnect_intervals,
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
#: Seconds before the first reconnection attempt; it doubles after each failed one.
DEFAULT_RECONNECT_INTERVAL: Final = 0.05
#: The longest wait between reconnection attempts: a restarted server is found within it.
DEFAULT_RECONNECT_MAX_INTERVAL: Final = 2.0
#: Seconds one reconnection attempt may take (a black-holed SYN would otherwise hang for
#: the kernel's two minutes of retries).
CONNECT_ATTEMPT_TIMEOUT: Final = 10.0
#: Seconds a bound endpoint waits for a remote with a backlog to read any of it before it
#: drops the remote; shorter than the default heartbeat timeout, which a paused remote
#: would otherwise hit first (we do not read its pings while it is paused).
DEFAULT_SLOW_REMOTE_TIMEOUT: Final = 10.0
#: The least default ``max_unsent_size``: room for a few large replies beyond the high-water
#: mark; the default grows to four of the largest frames when those are larger.
MIN_UNSENT_SIZE: Final = 64 * 1024 * 1024


class _Stream:
    """One TCP connection: its writer, its reader task, and its write batch.

    The first message of a loop iteration is written at once, so a lone message waits for
    nothing; the messages sent after it in the same iteration go out together in one write
    at the end of it (one system call instead of one per message). The ``FrameEncoder``
    copies small frames into one buffer and passes frames of ``COPY_LIMIT`` bytes or more
    through without a copy.
    """

    def __init__(self, writer: asyncio.StreamWriter, limits: _Limits | None = None) -> None:
        self.writer = writer
        self.task: asyncio.Task[Any] | None = None
        self._transport = writer.transport
        self._batch = FrameEncoder(COPY_LIMIT)
        self._holding = False  # a message was written this iteration: batch the rest
        self._loop = asyncio.get_running_loop()
        #: A bound endpoint's slow-consumer limits; ``None``: senders wait for ``drain``.
        self.limits = limits
        #: Why we dropped the remote as a slow consumer, once we did.
        self.slow: str | None = None

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
        if (
            len(batch) <= WRITE_HIGH_WATER
            and self._transport.get_write_buffer_size() <= WRITE_HIGH_WATER
        ):
            return False
        self._flush()
        if self.limits is not None:
            self._check_unsent(self.limits.max_unsent_size)
            return False  # a bound endpoint never waits for one remote: its reader pauses
        return True

    async def drain(self) -> None:
        """Wait until the socket's write buffer is below its high-water mark."""
        try:
            await self.writer.drain()
        except ConnectionError as exc:
            raise PeerDisconnectedError(f"the TCP connection broke: {exc}") from None

    def _release(self) -> None:
        """The loop iteration ended: write what was sent after its first message."""
        self._holding = False
        self._flush()

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

    def abort(self) -> None:
        """Drop the connection now, discarding what is unsent (the remote may not read)."""
        self._batch.data_to_send()
        self.writer.transport.abort()

    # -- slow consumers (bound side) -----------------------------------------------------------

    def backlogged(self) -> bool:
        """Whether reading should pause: a bound remote has a backlog of unsent output."""
        return (
            self.limits is not None
            and self.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER
        )

    def _check_unsent(self, limit: int) -> None:
        unsent = self.writer.transport.get_write_buffer_size()
        if unsent > limit:
            self.drop_slow(f"{unsent} bytes unsent, over max_unsent_size {limit}")
            raise PeerDisconnectedError(f"the remote was dropped: {self.slow}")

    async def wait_for_room(self) -> None:
        """Wait until the remote has read its backlog; drop it if it reads none for a while."""
        assert self.limits is not None
        timeout = self.limits.slow_remote_timeout
        unsent = self.writer.transport.get_write_buffer_size()
        while True:
            try:
                async with asyncio.timeout(timeout):
                    await self.writer.drain()
                return
            except TimeoutError:
                now = self.writer.transport.get_write_buffer_size()
                if now >= unsent:
                    self.drop_slow(f"it read none of {now} unsent bytes for {timeout} s")
                    return
                unsent = now  # it reads, slowly: give it more time

    def drop_slow(self, why: str) -> None:
        """Drop a remote that does not read what we send."""
        if self.slow is None:
            self.slow = f"too slow a consumer: {why}"
            log.warning("dropping a TCP remote: %s", self.slow)
        self.abort()


class _TCPConnection(Connection):
    def __init__(self, *, bound: bool, max_frame_size: int) -> None:
        self.bound = bound
        self._max_frame_size = max_frame_size
        self._events = EventQueue()
        self._drop_log = DropLog(log)
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
                if stream.backlogged():
                    await stream.wait_for_room()
            self._count_cut_short(decoder)
        except ProtocolError as exc:
            reason = f"framing error: {exc}"
            self.dropped += 1
            self._drop_log.dropped(f"{reason} (the connection is closed)")
        except (ConnectionError, OSError) as exc:
            reason = f"connection error: {exc}"
            self._count_cut_short(decoder)
        finally:
            stream.close()
            if self._streams.pop(key, None) is not None:
                slow = stream.slow is not None
                await self._events.put(Disconnected(key, stream.slow or reason, slow=slow))

    def _count_cut_short(self, decoder: FrameDecoder) -> None:
        """The connection ended in the middle of a message: that message is dropped."""
        if decoder.buffered:
            self.dropped += 1
            self._drop_log.dropped(f"the connection ended {decoder.buffered} bytes into one")

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
            if stream.writer.transport.get_write_buffer_size():
                stream.abort()  # a remote that does not read would hold it open for minutes

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


@dataclass(frozen=True, slots=True)
class _Limits:
    """How a bound endpoint treats remotes that do not read (see the module doc)."""

    max_unsent_size: int
    slow_remote_timeout: float


class _TCPServer(_TCPConnection):
    def __init__(self, max_frame_size: int, limits: _Limits) -> None:
        super().__init__(bound=True, max_frame_size=max_frame_size)
        self._server: asyncio.Server | None = None
        self._numbers = itertools.count(1)
        self._limits = limits

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self._server = await asyncio.start_server(self._accept, host, port, ssl=ssl_context)
        sockname = self._server.sockets[0].getsockname()
        self._address = f"{sockname[0]}:{sockname[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:
            writer.close()
            return
        key = next(self._numbers).to_bytes(8, "big")
        stream = _Stream(writer, self._limits)
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


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a client connects, and how it reconnects."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    reconnect: bool
    interval: float
    max_interval: float

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            self.host,
            self.port,
            ssl=self.ssl,
            server_hostname=self.server_hostname if self.ssl else None,
        )


class _TCPClient(_TCPConnection):
    """The connected side: one connection at a time, re-established when it is lost."""

    def __init__(self, max_frame_size: int, target: _Target) -> None:
        super().__init__(bound=False, max_frame_size=max_frame_size)
        self._target = target
        self._address = f"{target.host}:{target.port}"
        self._life: asyncio.Task[None] | None = None
        self.reconnects = target.reconnect

    async def start(self) -> None:
        """Make the first connection; fail fast if it cannot be made."""
        target = self._target
        try:
            reader, writer = await target.open()
        except ssl.SSLError:
            raise  # a certificate problem is clearer as itself
        except OSError as exc:
            raise PeerDisconnectedError(f"cannot connect to {self._address}: {exc}") from exc
        stream = self._attach(writer)
        self._life = stream.task = asyncio.create_task(self._live(stream, reader))

    def _attach(self, writer: asyncio.StreamWriter) -> _Stream:
        """Make a new connection the current one: ``send`` uses it from now on."""
        stream = _Stream(writer)
        stream.task = self._life
        self._streams[CONNECTED_KEY] = stream
        return stream

    async def _live(self, stream: _Stream, reader: asyncio.StreamReader) -> None:
        """Pump the connection; when it ends, reconnect (with backoff) and pump again."""
        while True:
            await self._pump(CONNECTED_KEY, reader, stream)
            if self._closed or not self._target.reconnect:
                return
            reader, writer = await self._reconnect()
            stream = self._attach(writer)

    async def _reconnect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        target = self._target
        delay = target.interval
        attempts = 0
        log.info("connection to %s lost; reconnecting", self._address)
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # jitter
            attempts += 1
            try:
                async with asyncio.timeout(CONNECT_ATTEMPT_TIMEOUT):
                    connection = await target.open()
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                log.debug("reconnection attempt %d to %s failed: %s", attempts, self._address, exc)
                delay = min(delay * 2, target.max_interval)
                continue
            log.info("reconnected to %s after %d attempt(s)", self._address, attempts)
            return connection

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        life = self._life
        if self._closed or life is None:
            await super().aclose()
            return
        life.cancel()  # also while it waits between attempts, with no stream to close
        await super().aclose()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(asyncio.gather(life, return_exceptions=True))


class TCPTransport(Transport):
    """Plain asyncio TCP, optionally with TLS.

    Args:
        ssl: An ``ssl.SSLContext``: on a bound peer a server context (set
            ``verify_mode = ssl.CERT_REQUIRED`` and load CA certificates to require client
            certificates); on a connecting peer a client context.
        server_hostname: The name to check the server certificate against, when it differs
            from the host connected to.
        reconnect: Whether a connecting endpoint re-establishes a lost connection.
        reconnect_interval: Seconds before the first reconnection attempt (default 0.05);
            the wait doubles after each failed attempt.
        reconnect_max_interval: The longest wait between attempts, in seconds (default 2).
        max_unsent_size: A bound endpoint drops a remote with more bytes than this sent to it
            and not yet read (default: four of the largest frames, at least 64 MiB).
        slow_remote_timeout: A bound endpoint drops a remote with a backlog (more than
            4 MiB unread) that reads none of it for this many seconds (default 10).

    Raises:
        TypeError, ValueError: An option has the wrong type or value.
    """

    def __init__(
        self,
        *,
        ssl: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        reconnect: bool = True,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
        reconnect_max_interval: float = DEFAULT_RECONNECT_MAX_INTERVAL,
        max_unsent_size: int | None = None,
        slow_remote_timeout: float = DEFAULT_SLOW_REMOTE_TIMEOUT,
    ) -> None:
        if ssl is not None and not isinstance(ssl, _SSLContext):
            raise TypeError("ssl must be an ssl.SSLContext")
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._reconnect = bool(reconnect)
        self._interval, self._max_interval = check_reconnect_intervals(
            reconnect_interval, reconnect_max_interval
        )
        if max_unsent_size is not None and (
            not isinstance(max_unsent_size, int) or isinstance(max_unsent_size, bool)
        ):
            raise TypeError("max_unsent_size must be an int or None")
        if max_unsent_size is not None and max_unsent_size <= WRITE_HIGH_WATER:
            raise ValueError(f"max_unsent_size must be over {WRITE_HIGH_WATER} bytes")
        self._max_unsent_size = max_unsent_size
        if not isinstance(slow_remote_timeout, int | float) or isinstance(
            slow_remote_timeout, bool
        ):
            raise TypeError("slow_remote_timeout must be a number of seconds")
        if not slow_remote_timeout > 0:
            raise ValueError(f"slow_remote_timeout must be positive, got {slow_remote_timeout}")
        self._slow_remote_timeout = float(slow_remote_timeout)

    async def bind(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractServerAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.bind``."""
        addr = _tcp_address(address, authenticator)
        unsent = self._max_unsent_size or max(MIN_UNSENT_SIZE, 4 * max_frame_size)
        conn = _TCPServer(max_frame_size, _Limits(unsent, self._slow_remote_timeout))
        await conn.start(addr.host, addr.port, self._ssl)
        return conn

    async def connect(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractClientAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.connect``.

        Raises:
            PeerDisconnectedError: The first connection cannot be made (the OS error is its
                ``__cause__``); later losses are reconnected.
            ssl.SSLError: The server's certificate failed verification.
        """
        addr = _tcp_address(address, authenticator)
        target = _Target(
            addr.host,
            addr.port,
            self._ssl,
            self._server_hostname,
            self._reconnect,
            self._interval,
            self._max_interval,
        )
        conn = _TCPClient(max_frame_size, target)
        await conn.start()
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
