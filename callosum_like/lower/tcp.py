"""The plain asyncio TCP transport: length-prefixed messages over asyncio protocols.

Theory of operation: every TCP connection carries messages framed by ``wire.framing``. A
bound endpoint (``loop.create_server``) numbers each accepted connection; that number is the
remote's key. Each connection is a ``_Stream`` protocol: its ``data_received`` callback feeds
a ``FrameDecoder`` and offers ``Connected``, ``Received`` and finally ``Disconnected`` to the
endpoint's bounded ``EventQueue`` directly, with no reader task (a task step per read was a
measurable part of a small call). A full queue pauses reading on every connection that
offers to it, and TCP flow control pushes back on the senders; reading resumes once the
queue has drained to half. A framing violation (an oversized frame, a bad count) closes
that connection only.

Writes: the first message of a loop iteration is written at once; the rest of the
iteration's messages go out together in one ``write`` at its end (one ``writelines`` when
large frames are among them, which are not copied). A sender waits for ``drain`` only once
that batch, or the transport's write buffer, is past ``WRITE_HIGH_WATER`` (the buffer's
high-water mark), and then until the buffer is under a quarter of it; small messages cost no
extra await.

Slow consumers (bound side): one remote that does not read what we send must neither stall
the others nor grow our memory. So on a bound endpoint a sender never waits for one remote;
instead, while a remote's unsent output is over ``WRITE_HIGH_WATER``, we stop reading from
it (it cannot hand us more work, and TCP pushes back on it). A remote is dropped, as
``Disconnected(slow=True)``, when its unsent output passes ``max_unsent_size`` or when it
reads none of it for ``slow_remote_timeout`` seconds. The connected side keeps the plain
backpressure (its senders wait): it has one remote, and it never stops reading for a
backlog, so the two sides cannot wait on each other.

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
from typing import TYPE_CHECKING, Final, cast

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


class _Stream(asyncio.Protocol):
    """One TCP connection: the protocol that reads and frames it, and its write batch.

    Reading: ``data_received`` feeds the connection's ``FrameDecoder`` and offers each message
    to the endpoint's ``EventQueue`` from the callback itself (no task per connection). When
    the queue is full, reading pauses until it has drained to half.

    Writing: the first message of a loop iteration is written at once, so a lone message
    waits for nothing; the messages sent after it in the same iteration go out together in
    one write at the end of it (one system call instead of one per message). The
    ``FrameEncoder`` copies small frames into one buffer and passes frames of ``COPY_LIMIT``
    bytes or more through without a copy. The transport's high-water mark is
    ``WRITE_HIGH_WATER``: above it a connected endpoint's senders wait (``drain``), and a bound
    endpoint stops reading from that remote instead (see the module doc).
    """

    def __init__(self, owner: _TCPConnection, key: bytes, limits: _Limits | None) -> None:
        self._owner = owner
        self.key = key
        #: A bound endpoint's slow-consumer limits; ``None``: senders wait for ``drain``.
        self.limits = limits
        #: Why we dropped the remote as a slow consumer, once we did.
        self.slow: str | None = None
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(owner.max_frame_size)
        self._events = owner.events
        self._batch = FrameEncoder(COPY_LIMIT)
        self._holding = False  # a message was written this iteration: batch the rest
        self._reason = "closed by the remote"
        self._broken = False  # a framing error: the rest of the stream is ignored
        self._queue_full = False  # reading paused until the event queue has room
        self._backlog = False  # reading paused: a bound remote does not read our output
        self._reading = True
        self._write_paused = False
        self._drainers: list[asyncio.Future[None]] = []
        self._watchdog: asyncio.TimerHandle | None = None
        self._lost: str | None = None
        #: Resolved once the connection is gone (``connection_lost``).
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if not self._owner.admit(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            messages = self._decoder.feed(data)
        except ProtocolError as exc:
            self._broken = True
            self._reason = f"framing error: {exc}"
            self._owner.dropped += 1
            self._owner.drop_log.dropped(f"{self._reason} (the connection is closed)")
            self.close()
            return
        key = self.key
        for frames in messages:
            self.offer(Received(key, frames))

    def eof_received(self) -> None:
        return None  # the transport closes; ``connection_lost`` reports it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._broken:
            if exc is not None:
                self._reason = f"connection error: {exc}"
            if self._decoder.buffered:
                self._owner.dropped += 1
                self._owner.drop_log.dropped(
                    f"the connection ended {self._decoder.buffered} bytes into one"
                )
        self._lost = lost = self.slow or self._reason
        if self._watchdog is not None:
            self._watchdog.cancel()
        drainers, self._drainers = self._drainers, []
        for waiter in drainers:
            if not waiter.done():
                waiter.set_exception(PeerDisconnectedError(f"the TCP connection ended: {lost}"))
        self._owner.lost(self, self._lost)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.limits is not None and self._transport is not None:
            self._backlog = True  # it cannot hand us more work while it does not read ours
            self._set_reading()
            self._arm_watchdog(self._transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._write_paused = False
        drainers, self._drainers = self._drainers, []
        for waiter in drainers:
            if not waiter.done():
                waiter.set_result(None)
        if self._backlog:
            self._backlog = False
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            self._set_reading()

    # -- reading -----------------------------------------------------------------------------

    def offer(self, event: Connected | Received) -> None:
        """Queue ``event``; pause reading while the endpoint's queue is full."""
        if not self._events.offer(event) and not self._queue_full:
            self._queue_full = True
            self._set_reading()
            self._events.when_space(self._queue_has_room)

    def _queue_has_room(self) -> None:
        self._queue_full = False
        self._set_reading()

    def _set_reading(self) -> None:
        want = not (self._queue_full or self._backlog)
        transport = self._transport
        if want == self._reading or transport is None or transport.is_closing():
            return
        self._reading = want
        if want:
            transport.resume_reading()
        else:
            transport.pause_reading()

    # -- writing -----------------------------------------------------------------------------

    def queue(self, frames: Sequence[Frame]) -> bool:
        """Add one message to the batch; return whether the sender must ``drain()`` now."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise PeerDisconnectedError("the TCP connection is closed")
        batch = self._batch
        batch.add(frames)
        if not self._holding:  # the first message of this loop iteration leaves at once
            self._holding = True
            self._loop.call_soon(self._release)
            self._flush()
        if len(batch) <= WRITE_HIGH_WATER and not self._write_paused:
            return False
        self._flush()
        if self.limits is not None:
            self._check_unsent(self.limits.max_unsent_size)
            return False  # a bound endpoint never waits for one remote: its reading pauses
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the socket's write buffer is back under its low-water mark."""
        if self._lost is not None:
            raise PeerDisconnectedError(f"the TCP connection ended: {self._lost}")
        if not self._write_paused:
            return
        waiter = self._loop.create_future()
        self._drainers.append(waiter)
        await waiter

    def _release(self) -> None:
        """The loop iteration ended: write what was sent after its first message."""
        self._holding = False
        self._flush()

    def _flush(self) -> None:
        pieces = self._batch.data_to_send()
        transport = self._transport
        if not pieces or transport is None or transport.is_closing():
            return
        if len(pieces) == 1:
            transport.write(pieces[0])
        else:
            transport.writelines(pieces)

    def unsent(self) -> int:
        """Bytes written to the transport and not yet taken by the socket."""
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    def close(self) -> None:
        """Write what is batched, then close (once the socket has taken it all)."""
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, discarding what is unsent (the remote may not read)."""
        self._batch.data_to_send()
        if self._transport is not None:
            self._transport.abort()

    # -- slow consumers (bound side) -----------------------------------------------------------

    def _check_unsent(self, limit: int) -> None:
        unsent = self.unsent()
        if unsent > limit:
            self.drop_slow(f"{unsent} bytes unsent, over max_unsent_size {limit}")
            raise PeerDisconnectedError(f"the remote was dropped: {self.slow}")

    def _arm_watchdog(self, unsent: int) -> None:
        assert self.limits is not None
        if self._watchdog is not None:
            self._watchdog.cancel()
        timeout = self.limits.slow_remote_timeout
        self._watchdog = self._loop.call_later(timeout, self._check_backlog, unsent)

    def _check_backlog(self, unsent: int) -> None:
        """The backlog's age reached the timeout: drop the remote unless it read some of it."""
        self._watchdog = None
        if not self._backlog or self._lost is not None:
            return
        now = self.unsent()
        if now >= unsent:
            timeout = self.limits.slow_remote_timeout if self.limits else 0
            self.drop_slow(f"it read none of {now} unsent bytes for {timeout} s")
        else:
            self._arm_watchdog(now)  # it reads, slowly: give it more time

    def drop_slow(self, why: str) -> None:
        """Drop a remote that does not read what we send."""
        if self.slow is None:
            self.slow = f"too slow a consumer: {why}"
            log.warning("dropping a TCP remote: %s", self.slow)
        self.abort()


class _TCPConnection(Connection):
    def __init__(self, *, bound: bool, max_frame_size: int) -> None:
        self.bound = bound
        self.max_frame_size = max_frame_size
        self.events = EventQueue()
        self.drop_log = DropLog(log)
        self._streams: dict[bytes, _Stream] = {}
        self._closed = False
        self._address = ""

    @property
    def local_address(self) -> str:
        """See ``Connection.local_address``."""
        return self._address

    def admit(self, stream: _Stream) -> bool:
        """A connection was made: make it the remote ``stream.key``; False once closed."""
        if self._closed:
            return False
        self._streams[stream.key] = stream
        stream.offer(Connected(stream.key))
        return True

    def lost(self, stream: _Stream, reason: str) -> None:
        """A connection ended: report it, unless we forgot the remote ourselves."""
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
            slow = stream.slow is not None
            self.events.offer(Disconnected(stream.key, reason, slow=slow))

    async def receive(self) -> Received | Connected | Disconnected:
        """See ``Connection.receive``."""
        return await self.events.get()  # type: ignore[return-value]

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
            if stream.unsent():
                stream.abort()  # a remote that does not read would hold it open for minutes

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        if self._closed:
            return
        self._closed = True
        self.events.close()
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.close()
        if streams:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.gather(*(s.closed for s in streams)))


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
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_stream, host, port, ssl=ssl_context)
        sockname = self._server.sockets[0].getsockname()
        self._address = f"{sockname[0]}:{sockname[1]}"

    def _new_stream(self) -> _Stream:
        """Each accepted connection is the remote numbered next."""
        return _Stream(self, next(self._numbers).to_bytes(8, "big"), self._limits)

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

    async def open(self, connection: _TCPClient) -> _Stream:
        """Connect; the new stream has made itself ``connection``'s remote when this returns."""
        _, stream = await asyncio.get_running_loop().create_connection(
            lambda: _Stream(connection, CONNECTED_KEY, None),
            self.host,
            self.port,
            ssl=self.ssl,
            server_hostname=self.server_hostname if self.ssl else None,
        )
        return stream


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
        try:
            stream = await self._target.open(self)
        except ssl.SSLError:
            raise  # a certificate problem is clearer as itself
        except OSError as exc:
            raise PeerDisconnectedError(f"cannot connect to {self._address}: {exc}") from exc
        self._life = asyncio.create_task(self._live(stream))

    async def _live(self, stream: _Stream) -> None:
        """Wait for the connection to end; then reconnect (with backoff), and wait again."""
        while True:
            await stream.closed
            if self._closed or not self._target.reconnect:
                return
            stream = await self._reconnect()

    async def _reconnect(self) -> _Stream:
        target = self._target
        delay = target.interval
        attempts = 0
        log.info("connection to %s lost; reconnecting", self._address)
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # jitter
            attempts += 1
            try:
                async with asyncio.timeout(CONNECT_ATTEMPT_TIMEOUT):
                    stream = await target.open(self)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                log.debug("reconnection attempt %d to %s failed: %s", attempts, self._address, exc)
                delay = min(delay * 2, target.max_interval)
                continue
            log.info("reconnected to %s after %d attempt(s)", self._address, attempts)
            return stream

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
