"""The ZeroMQ transport: a ROUTER socket when bound, a DEALER socket when connected.

Theory of operation:

* One ZeroMQ context per process (``shared_context()``, which is pyzmq's
  ``zmq.asyncio.Context.instance()``), not one per peer: each context costs an I/O thread,
  and one thread moves far more than one process can produce. Peers come and go on it; it is
  never terminated by us, and no other context is ever made, so no thread can leak with them.
  A user may pass a context of their own (``ZeroMQTransport(context=...)``); we neither size
  nor terminate it. Sockets are closed with a short linger (``CLOSE_LINGER_MS``), which
  libzmq's I/O thread spends sending what they took before.
* Limits: libzmq's default context holds 1,023 sockets; the shared one is sized for
  ``MAX_SOCKETS`` before its first socket (at import, and again for a new instance after a
  fork or a ``term``). Each connecting peer holds three sockets (its DEALER, the monitor
  libzmq makes for it, and the PAIR that reads the monitor) and four descriptors (their
  three mailbox eventfds and the TCP/IPC connection); a bound peer one socket, and one
  descriptor per remote. The first socket we
  make raises the process's soft limit on open files to its hard limit; running out of
  either limit raises ``OSError(EMFILE)`` naming the limit and how to raise it.
* Each connection owns one ``SocketDriver`` (``lower.zeromq_driver``) for its plain
  (non-async) socket: it watches the socket from the event loop without a future per
  message, and batches the small messages of a loop iteration into one ZeroMQ message. The
  theory of that part (receiving, sending, batching, the driver's queue) is in that module.
* Receiving: the driver hands each ZeroMQ message to the connection, which unpacks it into
  messages and offers them to its bounded ``EventQueue``; when that is full, the driver
  stops reading until the queue drains to half, and ZeroMQ's high-water marks push back on
  the remote.
* Batch layout (docs/PROTOCOL.md): a ZeroMQ message whose first frame (after the routing id)
  is empty is an envelope. ``[b"", batch]`` is a batch: messages in the stream framing of
  ``wire.framing``, split by ``split_batch``.
  ``[b"", b"", *frames]`` is one message whose own first frame is empty (escaped). A batch
  that does not split is dropped whole, a message of it with a frame over ``max_frame_size``
  alone; each drop is counted in ``dropped``.
* Bound (ROUTER, ``ROUTER_MANDATORY``): each remote is a routing id. The first message from a
  routing id we do not know yields ``Connected`` before its ``Received``. ZeroMQ does not say
  when a remote goes away, so the Peer's heartbeat (or the remote's Goodbye) decides that and
  calls ``disconnect(key)`` to forget it.
* Slow consumers (bound side): a send to a remote never waits, so one remote cannot stall the
  others. When a remote's pipe already holds ``HIGH_WATER_MARK`` messages it has not read,
  ZeroMQ refuses more (``EAGAIN``, thanks to ``ROUTER_MANDATORY``) and we drop that remote
  (``Disconnected(slow=True)``): its unread messages are what bounds our memory. A ROUTER
  cannot close one remote's connection, so a dropped remote that is still there must
  handshake again (its heartbeat makes a connecting Peer do so).
* Connected (DEALER): ``Connected`` is reported at once; the socket's monitor reports
  ``Disconnected`` when the TCP/IPC connection drops (after what the socket already holds
  from it), ``Connected`` again when it is re-established, and ``AuthFailed`` when the CURVE
  handshake is refused (without CURVE a failed handshake is only a broken connection). Each
  monitor is read by a PAIR socket of its peer's own: a ROUTER reading every monitor of a
  context would save a descriptor per peer, but libzmq aborted the process now and then
  with 2,000 peers on one (a PAIR talking to a ROUTER is outside what libzmq supports).
  ZeroMQ reconnects by itself, after ``reconnect_interval`` and then with the interval
  doubling up to ``reconnect_max_interval`` (``ZMQ_RECONNECT_IVL`` and
  ``ZMQ_RECONNECT_IVL_MAX``).
* CURVE: with an authenticator, the ROUTER is a CURVE server whose ZAP handler calls the
  authenticator (``lower.zap``); each message then carries the authenticated ``User-Id``.

The driver's limits (``PIPELINE_BATCH``, ``BATCH_SIZE``, ``SEND_QUEUE_SIZE``, ...) stay
importable from here.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ..addresses import Address, ZeroMQAddress
from ..errors import PeerClosedError, PeerDisconnectedError, ProtocolError
from ..stats import DropLog
from ..wire.framing import split_batch
from .base import (
    CONNECTED_KEY,
    AuthFailed,
    Connected,
    Connection,
    Disconnected,
    EventQueue,
    Frame,
    Received,
    Take,
    Transport,
    TransportEvent,
    check_reconnect_intervals,
)
from .registry import register_transport
from .zeromq_context import (
    FDS_PER_CONNECTING_PEER,
    MAX_SOCKETS,
    check_file_limit,
    out_of_room,
    raise_open_file_limit,
    shared_context,
)
from .zeromq_driver import BATCH_MARK as BATCH_MARK
from .zeromq_driver import BATCH_SIZE as BATCH_SIZE
from .zeromq_driver import CLOSE_LINGER_MS as CLOSE_LINGER_MS
from .zeromq_driver import PIPELINE_BATCH as PIPELINE_BATCH
from .zeromq_driver import RECV_BATCH as RECV_BATCH
from .zeromq_driver import SEND_QUEUE_SIZE as SEND_QUEUE_SIZE
from .zeromq_driver import SMALL_MESSAGE_SIZE as SMALL_MESSAGE_SIZE
from .zeromq_driver import ZERO_COPY_THRESHOLD as ZERO_COPY_THRESHOLD
from .zeromq_driver import SocketDriver, frame_contents

if TYPE_CHECKING:
    from ..auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = [
    "ZeroMQTransport",
    "shared_context",
    "raise_open_file_limit",
    "MAX_SOCKETS",
    "FDS_PER_CONNECTING_PEER",
]

log = logging.getLogger(__name__)

_monitor_names = itertools.count()

#: Messages ZeroMQ queues per pipe before a sender waits (ZeroMQ's own default is 1000). A
#: message may be a batch of up to ``BATCH_SIZE`` bytes, so this also bounds the bytes a remote
#: that stops reading can make us hold: about ``HIGH_WATER_MARK * BATCH_SIZE`` (32 MiB) of
#: small messages before the ROUTER drops it as a slow consumer.
HIGH_WATER_MARK: Final = 2_000
#: Seconds before ZeroMQ's first reconnection attempt; it doubles after each failed one.
DEFAULT_RECONNECT_INTERVAL: Final = 0.05
#: The longest wait between reconnection attempts: a restarted server is found within it.
DEFAULT_RECONNECT_MAX_INTERVAL: Final = 2.0
_MONITOR_EVENTS: Final = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
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


def _bind_endpoint(uri: str) -> str:
    # ZeroMQ spells "any free port" as "*"; accept the socket-API spelling ":0" too.
    if uri.startswith("tcp://") and uri.endswith(":0"):
        return uri[:-1] + "*"
    return uri


class _ZeroMQConnection(Connection):
    """What the ROUTER and the DEALER side share: the driver, the queue, the limits."""

    def __init__(self, sock: zmq.Socket[Any], endpoint: str, max_frame_size: int) -> None:
        self._endpoint = endpoint
        self._max_frame_size = max_frame_size
        self._events = EventQueue()
        self._closed = False
        self._zap_domain: str | None = None
        self._context = sock.context
        self._drop_log = DropLog(log)
        self._driver = SocketDriver(
            sock,
            self._on_message,
            copy=self._copy_frames,
            routed=self.bound,
            on_blocked=self._blocked_hook(),
        )

    def _blocked_hook(self) -> Callable[[bytes], None] | None:
        """What to do when the socket refuses a message for one remote (ROUTER only)."""
        return None

    _copy_frames = True

    @property
    def local_address(self) -> str:
        """See ``Connection.local_address``."""
        return self._endpoint

    def _on_message(self, parts: list[Any]) -> bool:
        raise NotImplementedError

    def _messages(self, parts: list[Frame]) -> list[list[Frame]]:
        """The messages in one ZeroMQ message (routing id removed): one, a batch, or none."""
        if parts[0]:
            return [] if self._oversize(parts) else [parts]
        if len(parts) == 2 and parts[1]:
            try:
                batch = split_batch(parts[1])
            except ProtocolError as exc:
                return self._drop(f"a bad batch: {exc}")
            if len(parts[1]) <= self._max_frame_size:
                return batch  # no frame in it can be over the limit
            return [m for m in batch if not self._oversize(m)]
        if len(parts) > 2 and not parts[1]:
            return [] if self._oversize(parts[2:]) else [parts[2:]]
        return self._drop("a bad envelope")

    def _drop(self, reason: str) -> list[list[Frame]]:
        """Count and log (rate-limited) a message we cannot deliver; nothing to deliver."""
        self.dropped += 1
        self._drop_log.dropped(reason)
        return []

    def _oversize(self, parts: Sequence[Frame]) -> bool:
        """Our ``MAXMSGSIZE`` admits whole batches, and inproc:// bypasses it: check here."""
        if max(map(len, parts)) > self._max_frame_size:
            self._drop(f"a message with a frame over {self._max_frame_size} bytes")
            return True
        return False

    def _offer(self, key: bytes, messages: list[list[Frame]], user_id: str | None) -> bool:
        room = True
        for frames in messages:
            room = self._events.offer(Received(key, frames, user_id))
        if not room:
            self._events.when_space(self._driver.resume_reading)
        return room

    def take_directly(self, take: Take) -> None:
        """See ``Connection.take_directly``."""
        self._events.take_directly(take)

    async def receive(self) -> TransportEvent:
        """See ``Connection.receive``."""
        return await self._events.get()

    def _post_multipart(
        self, frames: Sequence[Frame], route: bytes | None = None
    ) -> Awaitable[None] | None:
        """Queue one message; a coroutine only when the socket has no room (it must wait)."""
        if self._closed:
            raise PeerClosedError("connection closed")
        try:
            if self._driver.send_nowait(frames, route):
                return self._wait_room()
        except zmq.ZMQError as exc:
            self._raise_send_error(exc)
        return None

    async def _wait_room(self) -> None:
        try:
            await self._driver.wait_room()
        except zmq.ZMQError as exc:
            self._raise_send_error(exc)

    def _raise_send_error(self, exc: zmq.ZMQError) -> NoReturn:
        if exc.errno == zmq.EHOSTUNREACH:
            raise PeerDisconnectedError("the remote is not connected") from None
        if self._closed or exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
            raise PeerClosedError("connection closed") from None
        raise exc

    async def aclose(self) -> None:
        """See ``Connection.aclose``."""
        if self._closed:
            return
        self._closed = True
        self._events.close()
        self._close_sockets()
        if self._zap_domain is not None:
            from .zap import ZAPServer

            await ZAPServer.for_context(self._context).unregister(self._zap_domain)

    def _close_sockets(self) -> None:
        self._driver.close()


class _Router(_ZeroMQConnection):
    bound = True
    reports_disconnects = False

    def __init__(
        self,
        sock: zmq.Socket[Any],
        endpoint: str,
        max_frame_size: int,
        *,
        authenticated: bool,
        zap_domain: str | None,
    ) -> None:
        self._known: set[bytes] = set()
        self._copy_frames = not authenticated  # the User-Id property lives on zmq.Frame
        super().__init__(sock, endpoint, max_frame_size)
        self._zap_domain = zap_domain  # unregistered from the ZAP server on close

    def _on_message(self, parts: list[Any]) -> bool:
        if len(parts) < 2:
            self._drop("no frames after the routing id")
            return True
        user_id = None  # sizes are checked per message, once a batch is split
        if not self._copy_frames:
            value = parts[-1].get("User-Id")
            user_id = str(value) if value else None
            parts = [frame_contents(p) for p in parts]
        key = parts[0]
        if key not in self._known:
            self._known.add(key)
            self._events.offer(Connected(key, user_id))
        return self._offer(key, self._messages(parts[1:]), user_id)

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``. Never waits: a remote that cannot take more is dropped."""
        waiting = self.post(frames, to=to)
        if waiting is not None:
            await waiting

    def post(self, frames: Sequence[Frame], *, to: bytes | None = None) -> Awaitable[None] | None:
        """See ``Connection.post``; never waits (a remote that cannot take more is dropped)."""
        if self._closed:
            raise PeerClosedError("connection closed")
        if to is None or to not in self._known:
            raise PeerDisconnectedError(f"no connected remote with key {to!r}")
        return self._post_multipart(frames, to)

    def _blocked_hook(self) -> Callable[[bytes], None] | None:
        return self._drop_slow

    def _drop_slow(self, key: bytes) -> None:
        """``key``'s pipe is full (ZeroMQ refused more): forget it rather than wait for it."""
        if key not in self._known:
            return
        self._known.discard(key)
        reason = f"too slow a consumer: {HIGH_WATER_MARK} messages unread"
        log.warning("dropping ZeroMQ remote %r: %s", key, reason)
        self._events.offer(Disconnected(key, reason, slow=True))

    async def disconnect(self, peer: bytes) -> None:
        """See ``Connection.disconnect``."""
        self._known.discard(peer)


class _Dealer(_ZeroMQConnection):
    bound = False
    reconnects = True

    def __init__(
        self,
        sock: zmq.Socket[Any],
        endpoint: str,
        max_frame_size: int,
        *,
        monitored: bool,
        secure: bool = False,
    ) -> None:
        super().__init__(sock, endpoint, max_frame_size)
        self._secure = secure  # CURVE: a failed handshake means refused or wrong keys
        self._connected = True
        self._fd: int | None = None  # of the current TCP/IPC connection, from the monitor
        self.reconnects = monitored  # inproc:// reports nothing to reconnect on
        self._events.offer(Connected(CONNECTED_KEY))
        self._sock = sock
        self._monitor: SocketDriver | None = None
        self._monitored = sock if monitored else None
        if monitored:  # before the socket connects: no event of its first connection is lost
            name = f"inproc://callosum-like-monitor-{next(_monitor_names)}"
            sock.monitor(name, _MONITOR_EVENTS)
            try:
                pair: zmq.Socket[Any] = zmq.Socket(sock.context, zmq.PAIR)
            except BaseException:
                sock.disable_monitor()
                self._driver.close()
                raise
            pair.connect(name)
            self._monitor = SocketDriver(pair, self._on_monitor_parts)
            self._driver.recheck()  # as in ``disconnect``

    def _on_monitor_parts(self, parts: list[Any]) -> bool:
        self._on_monitor_event(parts)
        return True

    def _on_message(self, parts: list[Any]) -> bool:
        return self._offer(CONNECTED_KEY, self._messages(parts), None)

    def _on_monitor_event(self, parts: list[Any]) -> None:
        if self._closed:
            return
        event = parse_monitor_message(parts)
        kind = event["event"]
        log.debug("monitor of %s: %s %s", self._endpoint, zmq.Event(kind).name, event["value"])
        if kind == zmq.EVENT_CONNECTED:
            self._fd = event["value"]
        elif kind == zmq.EVENT_DISCONNECTED and self._connected:
            if self._fd is not None and event["value"] != self._fd:
                return  # a connection that ``disconnect`` already replaced
            self._connected = False
            self._driver.discard_queued()  # for the lost link: not to reach the next one
            self._driver.read_now()  # what that link brought goes before the news it is gone
            self._events.offer(Disconnected(CONNECTED_KEY, "connection dropped"))
        elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED and not self._connected:
            self._connected = True
            self._events.offer(Connected(CONNECTED_KEY))
        elif kind in _AUTH_FAILURES and self._secure:
            self._events.offer(AuthFailed(_AUTH_FAILURES[kind]))
        # Without CURVE a failed handshake is a connection that broke during it (a server
        # being killed, something else at the port): ZeroMQ tries again, and so do we.

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``."""
        waiting = self._post_multipart(frames)
        if waiting is not None:
            await waiting

    def post(self, frames: Sequence[Frame], *, to: bytes | None = None) -> Awaitable[None] | None:
        """See ``Connection.post``."""
        return self._post_multipart(frames)

    async def disconnect(self, peer: bytes) -> None:
        """Drop the current connection and make a new one (``Connected`` once it is up).

        The Peer calls this when the remote went silent or said Goodbye: the connection may
        look alive to ZeroMQ (a hung remote, a network that drops packets silently), and
        only a new one proves the remote is back. ZeroMQ reports no event for a connection
        we drop ourselves.
        """
        if not self.reconnects or self._closed:
            return
        self._connected = False
        self._fd = None
        self._driver.discard_queued()
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disconnect(self._endpoint)
        self._sock.connect(self._endpoint)
        self._driver.recheck()  # the socket's commands ran: its FD's edge may be gone

    def _close_sockets(self) -> None:
        if self._monitored is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._monitored.disable_monitor()
        if self._monitor is not None:
            self._monitor.close()
        super()._close_sockets()


class ZeroMQTransport(Transport):
    """ZeroMQ ROUTER/DEALER over ``tcp://``, ``ipc://`` or ``inproc://``, with optional CURVE.

    Args:
        context: The ZeroMQ context; by default the process-wide ``shared_context()``.
        reconnect_interval: Seconds before a connecting socket's first reconnection attempt
            (default 0.05); the wait doubles after each failed attempt.
        reconnect_max_interval: The longest wait between attempts, in seconds (default 2).

    Raises:
        TypeError, ValueError: An option has the wrong type or value.
    """

    def __init__(
        self,
        *,
        context: zmq.asyncio.Context | None = None,
        reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL,
        reconnect_max_interval: float = DEFAULT_RECONNECT_MAX_INTERVAL,
    ) -> None:
        if context is not None and not isinstance(context, zmq.asyncio.Context):
            raise TypeError("context must be a zmq.asyncio.Context")
        self._context = context
        interval, max_interval = check_reconnect_intervals(
            reconnect_interval, reconnect_max_interval
        )
        self._reconnect_ms = (max(1, round(interval * 1000)), max(1, round(max_interval * 1000)))

    def _socket(self, kind: int, max_frame_size: int) -> zmq.Socket[Any]:
        # A plain socket of the (asyncio) shared context: the driver does the async part,
        # and the ZAP handler, bound in that context, sees it.
        check_file_limit()
        context = self._context or shared_context()
        try:
            sock: zmq.Socket[Any] = zmq.Socket(context, kind)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EMFILE:
                raise out_of_room(exc, context) from exc
            raise
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max(max_frame_size, BATCH_SIZE))
        sock.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        sock.setsockopt(zmq.RECONNECT_IVL, self._reconnect_ms[0])
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, self._reconnect_ms[1])
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
        return _Router(
            sock,
            endpoint,
            max_frame_size,
            authenticated=authenticator is not None,
            zap_domain=zap_domain,
        )

    async def connect(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractClientAuthenticator | None = None,
    ) -> Connection:
        """See ``Transport.connect``."""
        uri = _zmq_uri(address)
        # Not ZMQ_IMMEDIATE: with it, libzmq discards the messages of a connection that
        # dropped before we read them (a closing server's Cancelled replies and Goodbye). What
        # the socket takes while no connection is up goes to the next one, where the new
        # link refuses it before its handshake; disconnect() starts a new pipe, without it.
        sock = self._socket(zmq.DEALER, max_frame_size)
        # inproc:// has no handshake and no monitor events.
        monitored = not uri.startswith("inproc://")
        try:
            if authenticator is not None:
                from .zap import configure_curve_client

                await configure_curve_client(sock, authenticator)
            dealer = _Dealer(
                sock, uri, max_frame_size, monitored=monitored, secure=authenticator is not None
            )
        except BaseException as exc:
            sock.close(linger=0)
            if isinstance(exc, zmq.ZMQError) and exc.errno == errno.EMFILE:
                raise out_of_room(exc, sock.context) from exc  # no room for its monitor
            raise
        try:
            sock.connect(uri)
        except BaseException:
            await dealer.aclose()
            raise
        return dealer


def _zmq_uri(address: Address) -> str:
    if not isinstance(address, ZeroMQAddress):
        raise ValueError(f"the ZeroMQ transport needs a ZeroMQ endpoint, not {address!r}")
    return address.uri


register_transport(ZeroMQAddress, ZeroMQTransport)
