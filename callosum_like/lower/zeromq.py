"""The ZeroMQ transport: a ROUTER socket when bound, a DEALER socket when connected.

Theory of operation:

* One ``zmq.asyncio.Context`` per process (``shared_context()``), not one per peer: each
  context costs an I/O thread, and one thread moves far more than one process can produce.
  Sockets are closed with ``linger=0``; the shared context is never terminated by us.
* Bound (ROUTER, ``ROUTER_MANDATORY``): each remote is a routing id. The first message from a
  routing id we do not know yields ``Connected`` before its ``Received``. ZeroMQ does not say
  when a remote goes away, so the Peer's heartbeat (or the remote's Goodbye) decides that and
  calls ``disconnect(key)`` to forget it.
* Connected (DEALER, ``IMMEDIATE`` so nothing queues on a dead pipe): ``Connected`` is
  reported at once; a socket monitor reports ``Disconnected`` when the TCP/IPC connection
  drops, ``Connected`` again when it is re-established, and ``AuthFailed`` when the CURVE
  handshake is refused.
* CURVE: with an authenticator, the ROUTER is a CURVE server whose ZAP handler calls the
  authenticator (``lower.zap``); each message then carries the authenticated ``User-Id``.
* One reader task per connection moves messages from the socket into a bounded
  ``EventQueue``; when it is full the reader stops and ZeroMQ's high-water marks push back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ..addresses import Address, ZeroMQAddress
from ..errors import PeerClosedError, PeerDisconnectedError
from .base import (
    AuthFailed,
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

__all__ = ["ZeroMQTransport", "shared_context"]

log = logging.getLogger(__name__)

#: Messages ZeroMQ queues per pipe before a sender waits (ZeroMQ's own default is 1000).
HIGH_WATER_MARK: Final = 10_000
_DEALER_KEY: Final = b""
_MONITOR_EVENTS: Final = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_AUTH_FAILURES: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused our key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "security handshake failed (protocol error)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "security handshake failed (wrong server key?)",
}


def shared_context() -> zmq.asyncio.Context:
    """The process-wide ZeroMQ context that every ZeroMQ connection uses by default."""
    return zmq.asyncio.Context.instance()


def _bind_endpoint(uri: str) -> str:
    # ZeroMQ spells "any free port" as "*"; accept the socket-API spelling ":0" too.
    if uri.startswith("tcp://") and uri.endswith(":0"):
        return uri[:-1] + "*"
    return uri


class _ZeroMQConnection(Connection):
    """What the ROUTER and the DEALER side share: the socket, the queue, the tasks."""

    def __init__(self, sock: zmq.asyncio.Socket, endpoint: str, max_frame_size: int) -> None:
        self._sock = sock
        self._max_frame_size = max_frame_size
        self._endpoint = endpoint
        self._events = EventQueue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._zap_domain: str | None = None

    @property
    def local_address(self) -> str:
        """See ``Connection.local_address``."""
        return self._endpoint

    def _oversize(self, parts: list[bytes]) -> bool:
        """MAXMSGSIZE guards the wire; inproc:// bypasses it, so check here too."""
        if any(len(p) > self._max_frame_size for p in parts):
            log.warning("dropped a message with a frame over %d bytes", self._max_frame_size)
            return True
        return False

    def _start(self, *coros: object) -> None:
        for coro in coros:
            self._tasks.append(asyncio.create_task(coro))  # type: ignore[arg-type]

    async def receive(self) -> Received | Connected | Disconnected | AuthFailed:
        """See ``Connection.receive``."""
        return await self._events.get()

    async def _send_multipart(self, frames: Sequence[Frame]) -> None:
        if self._closed:
            raise PeerClosedError("connection closed")
        try:
            await self._sock.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise PeerDisconnectedError("the remote is not connected") from None
            if self._closed or exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                raise PeerClosedError("connection closed") from None
            raise

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        if self._closed:
            return
        self._closed = True
        self._events.close()
        for task in self._tasks:
            task.cancel()
        # Shielded so that a cancelled caller still waits for the readers before closing.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(asyncio.gather(*self._tasks, return_exceptions=True))
        self._close_sockets()
        if self._zap_domain is not None:
            from .zap import ZAPServer

            await ZAPServer.for_context(self._sock.context).unregister(self._zap_domain)

    def _close_sockets(self) -> None:
        self._sock.close(linger=0)


class _Router(_ZeroMQConnection):
    bound = True
    reports_disconnects = False

    def __init__(
        self, sock: zmq.asyncio.Socket, endpoint: str, max_frame_size: int, *, authenticated: bool
    ) -> None:
        super().__init__(sock, endpoint, max_frame_size)
        self._known: set[bytes] = set()
        self._authenticated = authenticated
        self._start(self._read_loop())

    async def _read_loop(self) -> None:
        known, events = self._known, self._events
        while True:
            try:
                user_id, parts = await self._recv()
            except zmq.ZMQError as exc:
                log.debug("ROUTER reader stops: %s", exc)
                return
            if len(parts) < 2 or self._oversize(parts):
                continue
            key = parts[0]
            if key not in known:
                known.add(key)
                await events.put(Connected(key, user_id))
            await events.put(Received(key, parts[1:], user_id))

    async def _recv(self) -> tuple[str | None, list[bytes]]:
        if not self._authenticated:
            return None, await self._sock.recv_multipart()
        frames = await self._sock.recv_multipart(copy=False)
        user_id = frames[-1].get("User-Id")
        return str(user_id) if user_id else None, [f.bytes for f in frames]

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``."""
        if to is None or to not in self._known:
            raise PeerDisconnectedError(f"no connected remote with key {to!r}")
        await self._send_multipart([to, *frames])

    async def disconnect(self, peer: bytes) -> None:
        """See ``Connection.disconnect``."""
        self._known.discard(peer)


class _Dealer(_ZeroMQConnection):
    bound = False

    def __init__(
        self, sock: zmq.asyncio.Socket, endpoint: str, max_frame_size: int, *, monitored: bool
    ) -> None:
        super().__init__(sock, endpoint, max_frame_size)
        self._monitor: zmq.asyncio.Socket | None = None
        self._connected = True
        self._events_initial = Connected(_DEALER_KEY)
        coros: list[object] = [self._read_loop()]
        if monitored:
            self._monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            coros.append(self._monitor_loop(self._monitor))
        self._start(*coros)

    async def _read_loop(self) -> None:
        await self._events.put(self._events_initial)
        while True:
            try:
                parts = await self._sock.recv_multipart()
            except zmq.ZMQError as exc:
                log.debug("DEALER reader stops: %s", exc)
                return
            if not self._oversize(parts):
                await self._events.put(Received(_DEALER_KEY, parts))

    async def _monitor_loop(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            try:
                event = parse_monitor_message(await monitor.recv_multipart())
            except zmq.ZMQError:
                return
            await self._on_monitor_event(event["event"])

    async def _on_monitor_event(self, kind: int) -> None:
        if kind == zmq.EVENT_DISCONNECTED and self._connected:
            self._connected = False
            await self._events.put(Disconnected(_DEALER_KEY, "connection dropped"))
        elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED and not self._connected:
            self._connected = True
            await self._events.put(Connected(_DEALER_KEY))
        elif kind in _AUTH_FAILURES:
            await self._events.put(AuthFailed(_AUTH_FAILURES[kind]))

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``."""
        await self._send_multipart(frames)

    async def disconnect(self, peer: bytes) -> None:
        """A connected endpoint keeps its one remote; ZeroMQ reconnects by itself."""

    def _close_sockets(self) -> None:
        if self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
            self._monitor.close(linger=0)
        super()._close_sockets()


class ZeroMQTransport(Transport):
    """ZeroMQ ROUTER/DEALER over ``tcp://``, ``ipc://`` or ``inproc://``, with optional CURVE.

    Args:
        context: The ZeroMQ context; by default the process-wide ``shared_context()``.
    """

    def __init__(self, *, context: zmq.asyncio.Context | None = None) -> None:
        if context is not None and not isinstance(context, zmq.asyncio.Context):
            raise TypeError("context must be a zmq.asyncio.Context")
        self._context = context

    def _socket(self, kind: int, max_frame_size: int) -> zmq.asyncio.Socket:
        sock = (self._context or shared_context()).socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame_size)
        sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        return sock

    async def bind(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractServerAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.bind``."""
        uri = _zmq_uri(address)
        sock = self._socket(zmq.ROUTER, max_frame_size)
        zap_domain = None
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if authenticator is not None:
                from .zap import configure_curve_server

                zap_domain = await configure_curve_server(sock, authenticator)
            sock.bind(_bind_endpoint(uri))
            endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        except BaseException:
            sock.close(linger=0)
            if zap_domain is not None:
                from .zap import ZAPServer

                await ZAPServer.for_context(sock.context).unregister(zap_domain)
            raise
        conn = _Router(sock, endpoint, max_frame_size, authenticated=authenticator is not None)
        conn._zap_domain = zap_domain
        return conn

    async def connect(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractClientAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.connect``."""
        uri = _zmq_uri(address)
        sock = self._socket(zmq.DEALER, max_frame_size)
        try:
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if authenticator is not None:
                from .zap import configure_curve_client

                await configure_curve_client(sock, authenticator)
            sock.connect(uri)
        except BaseException:
            sock.close(linger=0)
            raise
        # inproc:// has no handshake and no monitor events.
        return _Dealer(sock, uri, max_frame_size, monitored=not uri.startswith("inproc://"))


def _zmq_uri(address: Address) -> str:
    if not isinstance(address, ZeroMQAddress):
        raise ValueError(f"the ZeroMQ transport needs a ZeroMQ endpoint, not {address!r}")
    return address.uri
