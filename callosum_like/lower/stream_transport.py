"""The stream transport: bound and connected endpoints over byte streams (TCP, Unix sockets).

Theory of operation: one ``StreamProtocol`` (``lower.stream``) frames each connection. A
bound endpoint (``StreamServer``) numbers each accepted connection; that number is the
remote's key. A connected endpoint (``StreamClient``) has one connection at a time, named
``CONNECTED_KEY``. What differs between TCP and Unix domain sockets is only how a server
listens and how a client dials; ``StreamTransport`` holds everything else (the options, their
checks, the slow-consumer limits, reconnection) and asks its subclass for those two steps
(``listen`` and ``dial``), so ``lower/tcp.py`` and ``lower/unix.py`` stay thin.

An optional ``ssl.SSLContext`` encrypts every connection (server and client side). A bound
endpoint whose context asks for client certificates (``verify_mode = ssl.CERT_REQUIRED``)
names each remote by its certificate (``lower.certificates``): ``Connected(key, user_id=...)``
carries the identity the ``identity_from_certificate`` hook derives (the subject's common name
by default), which wins over the identity the remote's Hello claims; a certificate the hook
refuses closes the connection before anything it sent is delivered.

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

import abc
import asyncio
import contextlib
import itertools
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Final, Generic, TypeVar

from ..errors import PeerClosedError, PeerDisconnectedError
from ..stats import DropLog
from .base import (
    CONNECTED_KEY,
    Connected,
    Connection,
    Disconnected,
    EventQueue,
    Frame,
    Received,
    Take,
    Transport,
    check_reconnect_intervals,
)
from .certificates import IdentityHook, check_identity_hook, identify
from .stream import WRITE_HIGH_WATER, Limits, StreamProtocol

if TYPE_CHECKING:
    from ..addresses import Address
    from ..auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = [
    "StreamTransport",
    "StreamConnection",
    "Listener",
    "ProtocolFactory",
    "DEFAULT_RECONNECT_INTERVAL",
    "DEFAULT_RECONNECT_MAX_INTERVAL",
    "DEFAULT_SLOW_REMOTE_TIMEOUT",
]

log = logging.getLogger(__name__)

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

#: Makes the protocol of one new connection; a listener or dialer hands it to asyncio.
ProtocolFactory = Callable[[], StreamProtocol]


@dataclass(slots=True)
class Listener:
    """What ``StreamTransport.listen`` made: the server, its address, and its cleanup.

    Attributes:
        server: The asyncio server accepting connections.
        address: The address actually bound, for ``Connection.local_address``.
        release: Called once the server is closed (a Unix socket removes its file).
    """

    server: asyncio.Server
    address: str
    release: Callable[[], None] = field(default=lambda: None)


class StreamConnection(Connection):
    """What the bound and the connected stream endpoints share: their remotes and events."""

    def __init__(self, *, bound: bool, max_frame_size: int, kind: str, logger: logging.Logger):
        self.bound = bound
        self.max_frame_size = max_frame_size
        #: The transport's name in messages (``"TCP"``, ``"Unix"``).
        self.kind = kind
        #: The concrete transport's logger, where its connections log.
        self.log = logger
        self.events = EventQueue()
        self.drop_log = DropLog(logger)
        self._streams: dict[bytes, StreamProtocol] = {}
        self._closed = False
        self._address = ""
        #: A bound TLS endpoint's identity hook (client certificates); ``None`` otherwise.
        self.identity_hook: IdentityHook | None = None

    @property
    def local_address(self) -> str:
        """See ``Connection.local_address``."""
        return self._address

    def admit(self, stream: StreamProtocol) -> bool:
        """A connection was made: make it the remote ``stream.key``; False once closed."""
        if self._closed:
            return False
        user_id = None
        if self.identity_hook is not None:
            der = stream.peer_certificate()
            if der is not None:  # a certificate the TLS handshake verified
                user_id = identify(self.identity_hook, der)
                if user_id is None:
                    self.log.warning(
                        "refused a %s remote: its client certificate proves no identity",
                        self.kind,
                    )
                    return False
        self._streams[stream.key] = stream
        stream.offer(Connected(stream.key, user_id=user_id))
        return True

    def lost(self, stream: StreamProtocol, reason: str) -> None:
        """A connection ended: report it, unless we forgot the remote ourselves."""
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]
            slow = stream.slow is not None
            self.events.offer(Disconnected(stream.key, reason, slow=slow))

    def take_directly(self, take: Take) -> None:
        """See ``Connection.take_directly``."""
        self.events.take_directly(take)

    async def receive(self) -> Received | Connected | Disconnected:
        """See ``Connection.receive``."""
        return await self.events.get()  # type: ignore[return-value]

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``."""
        waiting = self.post(frames, to=to)
        if waiting is not None:
            await waiting

    def post(self, frames: Sequence[Frame], *, to: bytes | None = None) -> Awaitable[None] | None:
        """See ``Connection.post``: a coroutine only when the socket pushes back."""
        if self._closed:
            raise PeerClosedError("connection closed")
        stream = self._streams.get(to if self.bound else CONNECTED_KEY)  # type: ignore[arg-type]
        if stream is None:
            raise PeerDisconnectedError(f"no connected remote with key {to!r}")
        return stream.drain() if stream.queue(frames) else None

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


class _StreamServer(StreamConnection):
    def __init__(self, max_frame_size: int, limits: Limits, kind: str, logger: logging.Logger):
        super().__init__(bound=True, max_frame_size=max_frame_size, kind=kind, logger=logger)
        self._listener: Listener | None = None
        self._numbers = itertools.count(1)
        self._limits = limits

    def new_stream(self) -> StreamProtocol:
        """Each accepted connection is the remote numbered next."""
        return StreamProtocol(self, next(self._numbers).to_bytes(8, "big"), self._limits)

    def listening(self, listener: Listener) -> None:
        """The server is up: remember it, to close it with this endpoint."""
        self._listener = listener
        self._address = listener.address

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        listener = self._listener
        if listener is not None and not self._closed:
            listener.server.close()
        await super().aclose()
        if listener is not None:
            await listener.server.wait_closed()
            self._listener = None
            listener.release()


class _StreamClient(StreamConnection):
    """The connected side: one connection at a time, re-established when it is lost."""

    def __init__(
        self,
        max_frame_size: int,
        dial: Callable[[ProtocolFactory], Awaitable[StreamProtocol]],
        options: _Reconnect,
        *,
        address: str,
        kind: str,
        logger: logging.Logger,
    ) -> None:
        super().__init__(bound=False, max_frame_size=max_frame_size, kind=kind, logger=logger)
        self._dial = dial
        self._options = options
        self._address = address
        self._life: asyncio.Task[None] | None = None
        self.reconnects = options.reconnect

    async def _open(self) -> StreamProtocol:
        """Connect; the new stream has made itself our remote when this returns."""
        return await self._dial(lambda: StreamProtocol(self, CONNECTED_KEY, None))

    async def start(self) -> None:
        """Make the first connection; fail fast if it cannot be made."""
        try:
            stream = await self._open()
        except ssl.SSLError:
            raise  # a certificate problem is clearer as itself
        except OSError as exc:
            raise PeerDisconnectedError(f"cannot connect to {self._address}: {exc}") from exc
        self._life = asyncio.create_task(self._live(stream))

    async def _live(self, stream: StreamProtocol) -> None:
        """Wait for the connection to end; then reconnect (with backoff), and wait again."""
        while True:
            await stream.closed
            if self._closed or not self._options.reconnect:
                return
            stream = await self._reconnect()

    async def _reconnect(self) -> StreamProtocol:
        delay = self._options.interval
        attempts = 0
        self.log.info("connection to %s lost; reconnecting", self._address)
        while True:
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # jitter
            attempts += 1
            try:
                async with asyncio.timeout(CONNECT_ATTEMPT_TIMEOUT):
                    stream = await self._open()
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                self.log.debug(
                    "reconnection attempt %d to %s failed: %s", attempts, self._address, exc
                )
                delay = min(delay * 2, self._options.max_interval)
                continue
            self.log.info("reconnected to %s after %d attempt(s)", self._address, attempts)
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


@dataclass(frozen=True, slots=True)
class _Reconnect:
    """Whether and how a client reconnects."""

    reconnect: bool
    interval: float
    max_interval: float


A = TypeVar("A")


class StreamTransport(Transport, Generic[A], abc.ABC):
    """A transport over byte streams: its options, and bind/connect around listen and dial.

    A subclass names itself (``kind``, ``log``) and provides ``check_address``, ``listen``
    and ``dial``; everything else is shared. Options as in ``TCPTransport``.

    Raises:
        TypeError, ValueError: An option has the wrong type or value.
    """

    #: The transport's name in messages.
    kind: ClassVar[str]
    #: The logger its connections log to.
    log: ClassVar[logging.Logger]

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
        identity_from_certificate: IdentityHook | None = None,
    ) -> None:
        if ssl is not None and not isinstance(ssl, _SSLContext):
            raise TypeError("ssl must be an ssl.SSLContext")
        self._ssl = ssl
        self._identity_hook = check_identity_hook(identity_from_certificate)
        self._server_hostname = server_hostname
        interval, max_interval = check_reconnect_intervals(
            reconnect_interval, reconnect_max_interval
        )
        self._reconnect = _Reconnect(bool(reconnect), interval, max_interval)
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

    @abc.abstractmethod
    def check_address(self, address: object) -> A:
        """Return ``address`` as this transport's address type.

        Raises:
            ValueError: It is another transport's address.
        """

    @abc.abstractmethod
    async def listen(self, address: A, factory: ProtocolFactory) -> Listener:
        """Start a server at ``address`` whose connections ``factory`` makes."""

    @abc.abstractmethod
    async def dial(self, address: A, factory: ProtocolFactory) -> StreamProtocol:
        """Open one connection to ``address`` with ``factory``'s protocol; return it."""

    def _checked(self, address: object, authenticator: object) -> A:
        checked = self.check_address(address)
        if authenticator is not None:
            raise ValueError(
                "authenticator is CURVE, which only the ZeroMQ transport speaks; secure the "
                f"{self.kind} transport with {type(self).__name__}(ssl=...)"
            )
        return checked

    async def bind(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractServerAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.bind``."""
        addr = self._checked(address, authenticator)
        unsent = self._max_unsent_size or max(MIN_UNSENT_SIZE, 4 * max_frame_size)
        limits = Limits(unsent, self._slow_remote_timeout)
        conn = _StreamServer(max_frame_size, limits, self.kind, self.log)
        if self._ssl is not None:
            conn.identity_hook = self._identity_hook
        conn.listening(await self.listen(addr, conn.new_stream))
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
        addr = self._checked(address, authenticator)

        async def dial(factory: ProtocolFactory) -> StreamProtocol:
            return await self.dial(addr, factory)

        conn = _StreamClient(
            max_frame_size,
            dial,
            self._reconnect,
            address=str(addr),
            kind=self.kind,
            logger=self.log,
        )
        await conn.start()
        return conn


_SSLContext = ssl.SSLContext
