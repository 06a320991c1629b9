"""The Peer: one endpoint that serves and invokes over one transport connection.

Theory of operation: this is the only module where a transport, the sans-IO session, the
codec and the dispatcher meet.

* ``__aenter__`` binds or connects the transport, starts the scheduler and two loops (receive
  and heartbeat) in one ``asyncio.TaskGroup``, and on the connecting side performs the
  handshake (``Hello`` -> ``Welcome``) before returning.
* Every remote is a ``Link``: its transport key, its ``Session`` (link and call states,
  liveness) and the futures of the calls we made on it. On the bound side links are
  registered under the remote's identity once its ``Hello`` arrives (the authenticated user
  id wins over the claimed one); a new link with a taken identity replaces the old one.
* The receive loop handles each transport event inside its own ``try``: a bad message costs
  that message (dropped, logged, counted), never the loop. If receiving itself fails (the
  transport raises, or reports itself closed while we are not closing), the loop logs why
  at ERROR and ends every link, so no pending call waits for a reply that cannot come.
* Replies resolve the caller's future with the reply *message*; the caller's own task unpacks
  the body, so the receive loop does no per-body work.
* When a link ends, every call pending on it fails (``PeerDisconnectedError``) and its
  handlers are cancelled; when we close, pending calls fail with ``PeerClosedError``, our
  running handlers answer ``Cancelled``, and every remote gets a ``Goodbye``.
* Federation (docs/federation.md): a bound peer also knows the names that relays announce
  (``PeerUp``/``PeerDown``), scoped under the announcing link's identity in a ``RouteTable``;
  ``to="cluster-b/agent-3"`` goes to the link ``cluster-b`` with ``Call.target``. A call that
  a relay forwards upwards carries ``Call.origin``; its handler sees ``peer_id`` scoped the
  same way, and its order keys are scoped per (link, origin). A ``Forwarder`` (the relay's,
  in ``relay``) plugs into a peer to take the calls it should pass on and the replies,
  cancels and credit of those calls; a peer without one behaves exactly as before.
* A connecting peer's transport reconnects by itself; each ``Connected`` it reports starts a
  new link and a new handshake. A heartbeat that expires asks the transport to drop the
  connection (``disconnect``), which on the connecting side means: make a new one. Only a
  ``Goodbye`` saying that a newer connection took our identity stops that (no flapping).
* Every link coming and going is a ``PeerEvent`` (``events``); counters and gauges live in
  ``stats`` and each call made or served is logged to ``callosum_like.rpc`` when enabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, cast

from .addresses import AddressLike, TCPAddress, parse_address
from .deadlines import Deadlines
from .dispatch import Dispatcher
from .errors import (
    AuthenticationError,
    ErrorCode,
    MessageTooLargeError,
    PeerClosedError,
    PeerDisconnectedError,
    ProtocolError,
    RPCCancelledError,
    RPCInternalError,
    RPCTimeoutError,
    RPCUserError,
    UnknownPeerError,
    error_for_code,
)
from .events import (
    DEFAULT_EVENT_BUFFER,
    EventHub,
    EventListener,
    PeerEvent,
    PeerEventKind,
    PeerEvents,
)
from .lower.base import (
    CONNECTED_KEY,
    AuthFailed,
    Connected,
    Connection,
    Disconnected,
    Received,
    Transport,
    TransportEvent,
)
from .lower.tcp import TCPTransport
from .lower.zeromq import ZeroMQTransport
from .ordering import Ordering
from .request import Body, Handler, Headers, StreamHandler
from .routing import RouteTable, scoped
from .session import CallInput, LinkInput, LinkState, Session
from .stats import Counters, DropLog, Gauges, PeerStatistics, log_rpc, rpc_started
from .streams import CreditWindow, StreamInbox
from .transfers import (
    DEFAULT_CHUNK_SIZE,
    OutgoingTransfers,
    Reassembly,
    TransferStopped,
)
from .wire import messages as m
from .wire.codec import (
    MAX_HEADER_SIZE,
    ChunkedHead,
    Frame,
    OversizeBodyError,
    decode,
    encode,
    encode_head,
    pack_body,
    unpack_body,
)
from .wire.messages import ROUTE_SEPARATOR

if TYPE_CHECKING:
    from .auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = ["Peer", "Link", "Forwarder"]

log = logging.getLogger(__name__)

#: Seconds ``__aenter__`` of a connecting peer waits for the bound side's Welcome.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: Requests a peer holds (running plus waiting) before it refuses new ones as overloaded.
DEFAULT_MAX_PENDING: Final = 10_000
#: Seconds within which two messages from the remote (other than chunks and their acks)
#: make a link count as shared, and for which it then stays shared: chunks are small.
SHARED_SPAN: Final = 0.1
#: How many times ``chunk_size`` a chunk is while its link is not shared.
BULK_CHUNKS: Final = 4
#: The Goodbye reason a bound peer gives a link whose identity a newer connection took.
REPLACED: Final = "replaced by a newer connection"


@dataclass(eq=False)
class Link:
    """One remote peer as this peer sees it."""

    key: bytes
    session: Session
    incoming: Reassembly
    user_id: str | None = None
    pending: dict[int, asyncio.Future[m.Message]] = field(default_factory=dict)
    streams: dict[int, StreamInbox] = field(default_factory=dict)
    uploads: dict[int, CreditWindow] = field(default_factory=dict)  # our streamed bodies
    outgoing: OutgoingTransfers = field(default_factory=OutgoingTransfers)
    #: Order keys of calls whose chunked body is being sent, and when that is done: a later
    #: call with the same key waits, so that the remote sees the calls in the order made.
    bulk_keys: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    #: When the remote's last two messages other than chunks and their acks came within
    #: ``SHARED_SPAN`` of each other, chunks stay small until ``SHARED_SPAN`` after the
    #: latest (see ``Peer._chunk_size_for``).
    last_other: float = -SHARED_SPAN
    shared_until: float = 0.0

    def saw_other(self, now: float) -> None:
        """A message arrived that is not part of a chunked transfer."""
        if now - self.last_other < SHARED_SPAN:
            self.shared_until = now + SHARED_SPAN
        self.last_other = now

    @property
    def identity(self) -> str:
        """The remote's identity once the handshake is done."""
        return self.session.remote_identity


class Forwarder(Protocol):
    """What a relay plugs into a Peer (``peer._forwarder``) to pass calls on.

    The Peer calls these from its receive loop; none may raise for a link that is gone.
    """

    async def forward_call(self, link: Link, msg: m.Call) -> bool:
        """Take a call with a ``target``, or one for a method this peer does not serve.

        Returns False to let the peer answer it itself (``MethodNotFoundError`` or, for a
        target, ``PeerDisconnectedError``).
        """
        ...

    async def forward_reply(self, link: Link, msg: m.Message) -> bool:
        """A reply or stream item arrived on ``link`` for a call no local caller made."""
        ...

    async def forward_control(self, link: Link, msg: m.Cancel | m.Credit) -> bool:
        """A Cancel or Credit for a call that arrived on ``link``; False if not forwarded."""
        ...

    async def link_lost(self, link: Link, reason: str) -> None:
        """``link`` ended; fail or cancel what was forwarded through it."""
        ...

    def peer_changed(self, name: str, up: bool, reason: str) -> None:
        """A name (direct or announced) appeared in or vanished from ``peer.peers``."""
        ...

    def uplink_opened(self, link: Link) -> None:
        """A connecting peer completed its handshake (also after a reconnection)."""
        ...


class Peer:
    """A bidirectional RPC endpoint; see the contract in the README and docs/guide.md.

    Args:
        bind: Address to listen at (many remotes may connect). Exactly one of ``bind`` and
            ``connect``. A ``str`` is a ZeroMQ endpoint.
        connect: Address to connect to (one remote).
        transport: A ``Transport`` instance or class; by default chosen by the address type.
        authenticator: A server authenticator (bound side) or client authenticator
            (connecting side) to turn on ZeroMQ CURVE.
        identity: Our name. A connecting peer is known by it on the bound side.
        ordering: The default ``Ordering`` for handlers registered without one.
        max_concurrency: Handlers running at once; further requests wait their turn.
        max_pending: Requests held at once (running plus waiting) before new ones are
            refused with ``OverloadedError``.
        invoke_timeout: Default seconds ``invoke`` waits, or ``None`` for no limit.
        execute_timeout: Seconds a handler may run before it is cancelled, or ``None``.
        compress: Snappy-compress large bodies we send.
        max_body_size: Largest body in bytes we send or accept.
        chunk_size: Bodies larger than this many bytes travel in chunks of this size, with
            other messages interleaved between them. While the remote sends nothing but
            the transfers' own messages, chunks are ``BULK_CHUNKS`` times this size.
        heartbeat_interval: Seconds between pings on every link.
        heartbeat_timeout: Seconds of silence after which a remote is considered gone.
        connect_timeout: Seconds ``__aenter__`` of a connecting peer waits for the handshake,
            or ``None`` to wait for ever.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument has a wrong value (both or neither of ``bind``/``connect``,
            a negative timeout, ...).
    """

    #: Items of a streamed body (``invoke`` of an async iterable) that may run ahead of the
    #: handler reading them.
    UPLOAD_WINDOW: Final = m.STREAM_WINDOW

    def __repr__(self) -> str:
        side = "bind" if self._bound else "connect"
        return f"<Peer {self._identity!r} {side}={self._address} {self._state}>"

    def __init__(
        self,
        *,
        bind: AddressLike | None = None,
        connect: AddressLike | None = None,
        transport: Transport | type[Transport] | None = None,
        authenticator: AbstractServerAuthenticator | AbstractClientAuthenticator | None = None,
        identity: str | None = None,
        ordering: Ordering = Ordering.UNORDERED,
        max_concurrency: int = 100,
        max_pending: int = DEFAULT_MAX_PENDING,
        invoke_timeout: float | None = None,
        execute_timeout: float | None = None,
        compress: bool = True,
        max_body_size: int = 64 * 2**20,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if (bind is None) == (connect is None):
            raise ValueError("exactly one of bind and connect must be given")
        self._bound = bind is not None
        self._address = parse_address(
            bind if self._bound else connect, argument="bind" if self._bound else "connect"
        )
        self._transport = _make_transport(transport, self._address)
        self._authenticator = _check_authenticator(authenticator, bound=self._bound)
        if identity is not None and (not isinstance(identity, str) or not identity):
            raise TypeError("identity must be a non-empty str")
        self._identity = identity or f"peer-{secrets.token_hex(4)}"
        if not isinstance(ordering, Ordering):
            raise TypeError(f"ordering must be an Ordering, not {type(ordering).__name__}")
        _check_count("max_concurrency", max_concurrency)
        _check_count("max_pending", max_pending)
        _check_count("max_body_size", max_body_size)
        _check_count("chunk_size", chunk_size)
        self._chunk_size = chunk_size
        self._invoke_timeout = _check_timeout("invoke_timeout", invoke_timeout)
        self._execute_timeout = _check_timeout("execute_timeout", execute_timeout)
        self._connect_timeout = _check_timeout("connect_timeout", connect_timeout)
        self._heartbeat_interval = _check_positive("heartbeat_interval", heartbeat_interval)
        self._heartbeat_timeout = _check_positive("heartbeat_timeout", heartbeat_timeout)
        if heartbeat_timeout <= heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        self._compress = bool(compress)
        self._max_body_size = max_body_size
        self._counters = Counters()
        self._deadlines = Deadlines()  # the timeouts of our calls
        self._drop_log = DropLog(log)
        self._dispatcher = Dispatcher(
            send=self._send_reply,
            default_ordering=ordering,
            max_concurrency=max_concurrency,
            max_pending=max_pending,
            execute_timeout=self._execute_timeout,
            counters=self._counters,
        )
        self._links: dict[bytes, Link] = {}  # by transport key
        self._by_identity: dict[str, Link] = {}  # open links, bound side
        self._routes = RouteTable()  # names announced by relays below us, bound side
        self._forwarder: Forwarder | None = None
        self._peer_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._connection: Connection | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._welcomed: asyncio.Future[None] | None = None
        #: The loop we run on, from ``open`` on: every later use takes it from here
        #: (``asyncio.get_running_loop`` is a ``getpid`` system call on Python 3.11).
        self._loop: asyncio.AbstractEventLoop
        self._events = EventHub()
        self._state = "new"

    # -- public surface -------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """Our identity (as assigned by the bound side, once connected)."""
        return self._identity

    @property
    def address(self) -> str:
        """The address bound or connected to; for port 0, the real port.

        Raises:
            RuntimeError: The peer is not open.
        """
        if self._connection is None:
            raise RuntimeError("the peer is not open")
        return self._connection.local_address

    @property
    def peers(self) -> frozenset[str]:
        """Identities of the connected remotes with a completed handshake."""
        if self._bound:
            return frozenset(self._by_identity).union(self._routes)
        link = self._links.get(CONNECTED_KEY)
        return frozenset({link.identity}) if link and link.session.is_open else frozenset()

    def events(self, maxsize: int = DEFAULT_EVENT_BUFFER) -> PeerEvents:
        """An async iterator of ``PeerEvent``: remotes connecting and going away.

        Use it as ``async with peer.events() as events: async for event in events: ...``.
        Events from the moment of this call on are kept; a consumer that falls more than
        ``maxsize`` events behind loses the oldest (counted in ``events.dropped``). The
        iteration ends when the peer closes.

        Raises:
            TypeError, ValueError: ``maxsize`` is not a positive int.
        """
        _check_count("maxsize", maxsize)
        return self._events.subscribe(maxsize)

    def add_event_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every ``PeerEvent``, from the receive loop.

        The listener must not block; an exception it raises is logged and ignored.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        self._events.add(listener)

    def remove_event_listener(self, listener: EventListener) -> None:
        """Stop calling ``listener``.

        Raises:
            KeyError: ``listener`` was not added.
        """
        self._events.remove(listener)

    def handle_function(
        self,
        name: str,
        handler: Handler | StreamHandler,
        *,
        ordering: Ordering | None = None,
    ) -> None:
        """Serve ``name`` with ``handler``: an ``async def`` or an async generator (a stream).

        Args:
            name: The method name callers invoke.
            handler: The coroutine function; its return value (any msgpack value) is the reply.
            ordering: Overrides the peer's default ordering for this method.

        Raises:
            TypeError: ``name`` is not a str, ``handler`` not an async function, or
                ``ordering`` not an ``Ordering``.
        """
        if not isinstance(name, str) or not name:
            raise TypeError("name must be a non-empty str")
        if not callable(handler):
            raise TypeError("handler must be an async function taking a Request")
        if ordering is not None and not isinstance(ordering, Ordering):
            raise TypeError(f"ordering must be an Ordering or None, not {type(ordering).__name__}")
        self._dispatcher.register(name, handler, ordering)  # type: ignore[arg-type]

    def unhandle_function(self, name: str) -> None:
        """Stop serving ``name``; later calls get ``MethodNotFoundError``.

        Raises:
            KeyError: No handler is registered under ``name``.
        """
        try:
            self._dispatcher.unregister(name)
        except KeyError:
            raise KeyError(f"no handler is registered under {name!r}") from None

    async def invoke(
        self,
        method: str,
        body: Body = None,
        *,
        order_key: str | None = None,
        to: str | None = None,
        timeout: float | None = None,
        headers: Headers | None = None,
    ) -> Body:
        """Call ``method`` on the remote and return its handler's return value.

        Args:
            method: The remote method name.
            body: Any msgpack value; or an async iterable of msgpack values, streamed to
                the handler (which reads ``request.body`` with ``async for``) with flow
                control: at most a window of items runs ahead of the handler.
            order_key: Calls with the same key are ordered by the remote's ordering.
            to: On the bound side, the identity of the remote to call.
            timeout: Seconds to wait (default ``invoke_timeout``); then the remote handler is
                cancelled and ``TimeoutError`` raised.
            headers: Per-call metadata, readable by the handler as ``request.headers``.

        Returns:
            The remote handler's return value.

        Raises:
            RPCUserError: The handler raised (with the remote traceback).
            MethodNotFoundError: The remote has no such method.
            RPCInternalError: The remote framework failed on the call.
            OverloadedError: The remote refused the call: it holds too many.
            RPCTimeoutError: The timeout passed (also a ``TimeoutError``).
            RPCCancelledError: The remote cancelled the call.
            PeerDisconnectedError: The remote went away.
            PeerClosedError: This peer is (or got) closed.
            MessageTooLargeError: ``body`` (or an item of a streamed body) exceeds
                ``max_body_size``.
            Exception: Whatever a streamed body's iterator raised (the remote handler is
                cancelled).
            UnknownPeerError: ``to`` names no connected remote.
            TypeError, ValueError: Misused arguments; ``body`` not msgpack-serializable.

        Cancellation: cancelling the caller cancels the remote handler.
        """
        upload = body if isinstance(body, AsyncIterable) else None
        link, msg = self._prepare_call(
            method,
            None if upload is not None else body,
            order_key,
            to,
            timeout,
            headers,
            False,
            upload,
        )
        reply = await self._await_reply(link, msg, msg.timeout, upload)
        try:
            return _outcome(reply)
        except Exception as exc:
            self._counters.count_error(type(exc).__name__)
            raise

    async def stream(
        self,
        method: str,
        body: Body = None,
        *,
        order_key: str | None = None,
        to: str | None = None,
        timeout: float | None = None,
        headers: Headers | None = None,
    ) -> AsyncIterator[Body]:
        """Call a stream handler (an async generator) and iterate over what it yields.

        Use it as ``async for item in peer.stream(...)``. Flow control: the remote generator
        runs at most ``STREAM_WINDOW`` items ahead of this consumer. Leaving the loop early
        (``break``, an exception, cancellation) cancels the remote generator.

        Args:
            method: The remote method name (registered with an async generator handler).
            body: Any msgpack value.
            order_key: As for ``invoke``; the stream's end is ordered like a reply.
            to: As for ``invoke``.
            timeout: Seconds for the whole stream (default ``invoke_timeout``); counted only
                while this iterator waits for the next item.
            headers: As for ``invoke``.

        Yields:
            Each item the remote generator yields, in order.

        Raises:
            The errors of ``invoke``; ``RPCInternalError`` when the method is not a stream.
        """
        link, msg = self._prepare_call(method, body, order_key, to, timeout, headers, True)
        call_id, call_timeout = msg.id, msg.timeout
        inbox = StreamInbox(m.STREAM_WINDOW)
        link.streams[call_id] = inbox
        self._counters.calls_out += 1
        deadline = None if call_timeout is None else self._loop.time() + call_timeout
        finished = False
        try:
            await self._send_call(link, msg)
            while True:
                reply = await self._next_item(inbox, deadline, method)
                if type(reply) is m.StreamEnd:
                    finished = True
                    return
                if type(reply) is not m.StreamItem:
                    finished = True
                    _outcome(reply)  # raises the remote's error
                    raise RPCInternalError(f"{type(reply).__name__} in a stream")
                yield unpack_body(reply.body)
                if inbox.consumed():
                    self._spawn_background(self._send_quietly(link, inbox.credit_message(call_id)))
        finally:
            link.streams.pop(call_id, None)
            if not finished:
                self._abandon(link, call_id)

    async def _next_item(
        self, inbox: StreamInbox, deadline: float | None, method: str
    ) -> m.Message:
        try:
            async with asyncio.timeout_at(deadline) as scope:
                return await inbox.get()
        except TimeoutError:
            if not scope.expired():
                raise
            self._counters.count_error(RPCTimeoutError.__name__)
            raise RPCTimeoutError(f"stream {method!r} passed its timeout") from None

    async def wait_for_peer(self, identity: str, timeout: float | None = None) -> None:
        """Wait until a remote named ``identity`` has connected (returns at once if it is).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            PeerClosedError: This peer closed meanwhile.
        """
        self._check_open()
        timeout = _check_timeout("timeout", timeout)
        if identity in self.peers:
            return
        waiter = self._loop.create_future()
        self._peer_waiters.setdefault(identity, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        finally:
            waiters = self._peer_waiters.get(identity, [])
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                self._peer_waiters.pop(identity, None)

    def statistics(self) -> PeerStatistics:
        """A snapshot of this peer's counters and gauges (see ``PeerStatistics``)."""
        running = self._dispatcher.active
        gauges = Gauges(
            calls_in_flight=sum(len(lk.pending) + len(lk.streams) for lk in self._links.values()),
            requests_running=running,
            requests_queued=self._dispatcher.running - running,
            connected_peers=len(self.peers),
            transport_dropped=self._connection.dropped if self._connection else 0,
        )
        return self._counters.snapshot(gauges)

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a Peer can be opened only once")
        self._state = "opening"
        try:
            await self._open()
        except BaseException:
            await self.aclose()
            raise
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        max_frame = self._max_body_size + MAX_HEADER_SIZE
        self._dispatcher.start()
        if self._bound:
            self._connection = await self._transport.bind(
                self._address,
                max_frame_size=max_frame,
                authenticator=self._authenticator,
            )
        else:
            self._welcomed = self._loop.create_future()
            self._connection = await self._transport.connect(
                self._address,
                max_frame_size=max_frame,
                authenticator=self._authenticator,
            )
        self._loops = [
            asyncio.create_task(self._receive_loop(), name=f"{self!r} receive"),
            asyncio.create_task(self._heartbeat_loop(), name=f"{self!r} heartbeat"),
        ]
        if self._welcomed is not None:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await self._welcomed
            except TimeoutError:
                raise RPCTimeoutError(
                    f"no handshake from {self._address} within connect_timeout "
                    f"{self._connect_timeout} s"
                ) from None

    async def aclose(self) -> None:
        """Close: fail our pending calls, cancel our handlers, say goodbye, release everything.

        Idempotent. Cancellation: everything is released even when the caller is cancelled.
        """
        if self._state in ("closing", "closed"):
            return
        self._state = "closing"
        await asyncio.shield(self._close())

    async def _close(self) -> None:
        closed = PeerClosedError("the peer was closed")
        for link in self._links.values():
            self._fail_pending(link, closed)
            link.outgoing.fail(closed)
        await self._dispatcher.aclose()  # its Cancelled replies still go out on open links
        for link in list(self._links.values()):
            if link.session.transition(LinkInput.CLOSE) is LinkState.CLOSING:  # it was open
                with contextlib.suppress(Exception):
                    await self._send(link, m.Goodbye(reason="closing"))
        for waiters in self._peer_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(PeerClosedError("the peer was closed"))
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.cancel()
        await self._stop_tasks()
        self._deadlines.clear()
        if self._connection is not None:
            await self._connection.aclose()
        self._end_links()
        self._state = "closed"

    async def _stop_tasks(self) -> None:
        tasks = [*self._loops, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _end_links(self) -> None:
        for link in self._links.values():
            for name in self._routes.drop_link(link.key):
                self._events.emit(PeerEvent(PeerEventKind.DISCONNECTED, name, "this peer closed"))
            if link.session.state in _LIVE:  # it connected while we said our goodbyes
                link.session.transition(LinkInput.CLOSE)
            if link.session.state is LinkState.CLOSING:
                self._events.emit(
                    PeerEvent(PeerEventKind.DISCONNECTED, link.identity, "this peer closed")
                )
                link.session.transition(LinkInput.CLOSED)
        self._links.clear()
        self._by_identity.clear()
        self._events.close()

    # -- calls we make --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise PeerClosedError(
                "the peer is closed"
                if self._state in ("closing", "closed")
                else "the peer is not open; use 'async with'"
            )

    def _route(self, to: str | None) -> tuple[Link, str | None]:
        """The link a call ``to`` goes out on, and the ``Call.target`` to send with it."""
        self._check_open()
        if to is not None and not isinstance(to, str):
            raise TypeError(f"to must be a str or None, not {type(to).__name__}")
        if not self._bound:
            link = self._links.get(CONNECTED_KEY)
            if link is None or not link.session.is_open:
                raise PeerDisconnectedError("not connected to the remote")
            return link, None
        if to is None:
            count = len(self._by_identity) + len(self._routes)
            if count != 1:
                text = f"to=None needs exactly one connected peer, there are {count}"
                raise UnknownPeerError(text)
            return next(iter(self._by_identity.values())), None
        found = self._lookup(to)
        if found is None:
            raise UnknownPeerError(f"no connected peer is named {to!r}")
        return found

    def _lookup(self, name: str) -> tuple[Link, str | None] | None:
        """The link that reaches ``name`` (direct or announced) and the target to send with."""
        link = self._by_identity.get(name)
        if link is not None:
            return link, None
        found = self._routes.lookup(name)
        if found is None:
            return None
        key, target = found
        link = self._links.get(key)  # type: ignore[call-overload]
        return None if link is None else (link, target)

    def _prepare_call(
        self,
        method: str,
        body: Body,
        order_key: str | None,
        to: str | None,
        timeout: float | None,
        headers: Headers | None,
        stream: bool,
        upload: AsyncIterable[Body] | None = None,
    ) -> tuple[Link, m.Call]:
        """Check a call's arguments, pick its link and build its Call (nothing is sent)."""
        call_timeout = _check_timeout(
            "timeout", self._invoke_timeout if timeout is None else timeout
        )
        _check_call_args(method, order_key, headers)
        link, target = self._route(to)
        packed = pack_body(body)
        self._check_size(link, len(packed))
        msg = m.Call(
            id=link.session.start_call(),
            method=method,
            body=packed,
            order_key=order_key,
            headers=dict(headers) if headers else None,
            timeout=call_timeout,
            stream=stream,
            upload=upload is not None,
            target=target,
        )
        return link, msg

    def _check_size(self, link: Link, size: int) -> None:
        limit = min(self._max_body_size, link.session.remote_max_body_size)
        if size > limit:
            raise MessageTooLargeError(f"body of {size} bytes exceeds max_body_size {limit}")

    async def _await_reply(
        self,
        link: Link,
        msg: m.Call,
        timeout: float | None,
        upload: AsyncIterable[Body] | None = None,
    ) -> m.Message:
        future: asyncio.Future[m.Message] = self._loop.create_future()
        link.pending[msg.id] = future
        self._counters.calls_out += 1
        started = rpc_started()
        expiry = deadline = None
        try:
            if timeout is not None:  # one shared timer, not a timeout context per call
                # The timeout covers sending too: a chunked body may take a while to go out.
                expiry = _Expiry(future, asyncio.current_task(self._loop))
                deadline = self._deadlines.add(timeout, _expire, expiry)
            return await self._send_and_wait(link, msg, future, upload)
        except asyncio.CancelledError:
            self._abandon(link, msg.id)
            if expiry is None or not expiry.fired or expiry.task.uncancel():  # type: ignore[union-attr]
                self._counters.count_error("CancelledError")
                raise  # cancelled, not (only) timed out
            self._counters.count_error(RPCTimeoutError.__name__)
            raise RPCTimeoutError(f"{msg.method!r} took longer than {timeout} s") from None
        finally:
            if deadline is not None:
                self._deadlines.discard(deadline)
            link.pending.pop(msg.id, None)
            if started is not None:
                log_rpc("invoked", msg.method, link.identity, started, _call_outcome(future))

    async def _send_and_wait(
        self,
        link: Link,
        msg: m.Call,
        future: asyncio.Future[m.Message],
        upload: AsyncIterable[Body] | None = None,
    ) -> m.Message:
        try:
            await self._send_call(link, msg)
        except BaseException:
            link.session.call_input(msg.id, CallInput.REPLY)  # it never left whole: forget it
            if future.done() and not future.cancelled():
                future.exception()  # the link failed it too; the send's error is the one raised
            raise
        if upload is None:
            return await future
        return await self._upload_and_wait(link, msg.id, future, upload)

    async def _upload_and_wait(
        self,
        link: Link,
        call_id: int,
        future: asyncio.Future[m.Message],
        upload: AsyncIterable[Body],
    ) -> m.Message:
        """Stream ``upload`` as the body of call ``call_id`` until it ends or a reply comes."""
        link.uploads[call_id] = CreditWindow(self.UPLOAD_WINDOW)
        pump = asyncio.ensure_future(self._pump_upload(link, call_id, upload))
        try:
            await asyncio.wait((future, pump), return_when=asyncio.FIRST_COMPLETED)
            if not future.done() and (error := pump.exception()) is not None:
                self._abandon(link, call_id)  # our iterator failed: stop the handler
                raise error
            return await future  # the handler may answer before it read everything
        finally:
            link.uploads.pop(call_id, None)
            if not pump.done():
                pump.cancel()
            # Let it stop, but not by swallowing a cancellation of our own caller.
            await asyncio.wait((pump,))
            if not pump.cancelled():
                pump.exception()  # retrieved: raised above, or moot once the reply came

    async def _pump_upload(self, link: Link, call_id: int, items: AsyncIterable[Body]) -> None:
        window = link.uploads[call_id]
        async for item in items:
            packed = pack_body(item)
            self._check_size(link, len(packed))
            await window.take()
            await self._send(link, m.UploadItem(id=call_id, body=packed))
        await self._send(link, m.UploadEnd(id=call_id))

    def _abandon(self, link: Link, call_id: int) -> None:
        """The caller gave up on ``call_id``: tell the remote to stop it (in the background)."""
        if link.session.call_input(call_id, CallInput.ABANDON) is not None:
            self._spawn_background(self._send_quietly(link, m.Cancel(id=call_id)))

    def _spawn_background(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_call(self, link: Link, msg: m.Call) -> None:
        """Send a call; if its link turns out to be gone, end the link at once.

        The transport may know the connection is gone before its ``Disconnected`` event is
        handled. Ending the link now keeps ``peers`` and ``wait_for_peer`` truthful, so a
        caller that waits for the peer and retries does wait (for the reconnection) instead
        of failing again and again without ever yielding to the event loop.
        """
        try:
            await self._send(link, msg)
        except PeerDisconnectedError as exc:
            # The caller (invoke or stream) raises this error: count it, as for any error.
            waiting = link.pending.pop(msg.id, None) or link.streams.pop(msg.id, None)
            if waiting is not None:
                self._counters.count_error(type(exc).__name__)
            if self._links.get(link.key) is link:
                await self._link_lost(link.key, LinkInput.LOST, str(exc))
            raise

    async def _send_quietly(self, link: Link, msg: m.Message) -> None:
        with contextlib.suppress(PeerDisconnectedError, PeerClosedError):
            await self._send(link, msg)

    async def _send(self, link: Link, msg: m.Message) -> None:
        if self._connection is None:
            raise PeerClosedError("the peer is not open")
        kind = type(msg)
        if kind in _BODY_KINDS:
            if len(msg.body) > self._chunk_size:  # type: ignore[union-attr]
                await self._send_chunked(link, msg)
                return
            if link.bulk_keys and kind is m.Call:
                await _after_bulk(link, msg.order_key)  # type: ignore[union-attr]
        frames = encode(msg, compress=self._compress)  # _send_frames, inline: the hot path
        self._counters.bytes_out += sum(map(len, frames))
        await self._connection.send(frames, to=link.key)

    async def _send_frames(self, link: Link, frames: list[Frame]) -> None:
        assert self._connection is not None
        self._counters.bytes_out += sum(map(len, frames))
        await self._connection.send(frames, to=link.key)

    async def _send_chunked(self, link: Link, msg: m.Message) -> None:
        """Send ``msg`` as a head and chunks, a window of chunks ahead of the receiver."""
        order_key = msg.order_key if type(msg) is m.Call else None
        done: asyncio.Future[None] | None = None
        if order_key is not None:
            await _after_bulk(link, order_key)
            done = link.bulk_keys[order_key] = self._loop.create_future()
        transfer = await link.outgoing.open()
        finished = False
        try:
            await self._send_frames(link, encode_head(msg, transfer))
            size = self._chunk_size_for(link)
            for part in _slices(msg.body, size):  # type: ignore[union-attr]
                await link.outgoing.take(transfer)
                chunk = m.Chunk(transfer=transfer, body=cast(bytes, part))
                await self._send_frames(link, encode(chunk, compress=self._compress))
            finished = True
        except TransferStopped:
            log.info("the remote refused the body of %s", type(msg).__name__)
        finally:
            link.outgoing.close(transfer)
            if not finished and link.session.is_open:
                self._spawn_background(self._send_quietly(link, m.ChunkAbort(transfer=transfer)))
            if done is not None:
                del link.bulk_keys[order_key]  # type: ignore[arg-type]
                done.set_result(None)

    def _chunk_size_for(self, link: Link) -> Callable[[], int]:
        """The size of the next chunk on ``link``: ``chunk_size``, or more while it is quiet.

        Small chunks are for the small messages that would otherwise wait behind a large
        body. While the remote sends nothing else (two messages within ``SHARED_SPAN`` of
        each other mark the link as shared), no one waits, and chunks are ``BULK_CHUNKS``
        times larger: over ZeroMQ each chunk costs about 0.1 ms of CPU on either side beyond
        its bytes (docs/performance.md). A small message that comes when the link was quiet
        waits behind at most a window of large chunks; the chunks after it are small.
        """
        small, bulk = self._chunk_size, self._chunk_size * BULK_CHUNKS
        clock = self._loop.time

        def size() -> int:
            return small if clock() < link.shared_until else bulk

        return size

    async def _send_reply(self, key: Hashable, reply: m.Message) -> None:
        link = self._links.get(key)  # type: ignore[call-overload]
        if link is None or not link.session.is_open:
            return
        if type(reply) is m.Result:
            # The caller refuses a body over its max_body_size, and its transport drops the
            # whole link for a frame over max_body_size + MAX_HEADER_SIZE: answer the error
            # instead, so an oversize result costs only its own call.
            limit = min(self._max_body_size, link.session.remote_max_body_size)
            if len(reply.body) > limit:
                text = f"result of {len(reply.body)} bytes exceeds max_body_size {limit}"
                reply = m.Error(id=reply.id, code=MessageTooLargeError.code, message=text)
        with contextlib.suppress(PeerDisconnectedError, PeerClosedError):
            try:
                await self._send(link, reply)
            except TypeError:  # cannot happen for our own messages; keep the invariant visible
                log.exception("could not encode %r", reply)

    # -- the receive loop -----------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        """Handle transport events until we close; if receiving fails, end every link.

        A bad event costs that event (dropped, logged, counted). If ``receive`` itself
        raises, or reports the connection closed while we did not close it, no event will
        come again: the reason is logged at ERROR and every link ends, so each pending call
        fails with ``PeerDisconnectedError`` instead of waiting for ever.
        """
        assert self._connection is not None
        try:
            await self._receive_events(self._connection.receive)
        except Exception as exc:
            if self._state in ("closing", "closed") and isinstance(exc, PeerClosedError):
                return  # our own close
            log.error("%r stopped receiving: %r; its links end", self, exc, exc_info=exc)
            await self._end_all_links(f"this peer stopped receiving ({exc!r})")

    async def _end_all_links(self, reason: str) -> None:
        for key in list(self._links):
            await self._link_lost(key, LinkInput.LOST, reason)
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_exception(PeerDisconnectedError(reason))

    async def _receive_events(self, receive: Callable[[], Awaitable[TransportEvent]]) -> None:
        while True:
            event = await receive()
            try:
                if type(event) is Received:  # the common case, one coroutine less
                    await self._on_received(event)
                else:
                    await self._on_event(event)
            except ProtocolError as exc:
                self._drop(f"protocol violation: {exc}")
            except Exception:
                log.exception("error while handling %r; the message is dropped", event)
                self._counters.dropped_messages += 1
            del event  # do not hold its frames (maybe a large body) until the next one

    def _drop(self, reason: str) -> None:
        self._counters.dropped_messages += 1
        self._drop_log.dropped(reason)

    async def _on_event(self, event: Received | Connected | Disconnected | AuthFailed) -> None:
        if type(event) is Received:
            await self._on_received(event)
        elif type(event) is Connected:
            await self._on_connected(event)
        elif type(event) is Disconnected:
            if event.slow:
                self._counters.slow_remotes_dropped += 1
            await self._link_lost(event.peer, LinkInput.LOST, event.reason)
        elif type(event) is AuthFailed:
            self._on_auth_failed(event)

    async def _on_connected(self, event: Connected) -> None:
        now = self._loop.time()
        old = self._links.get(event.peer)
        if old is not None:
            await self._link_lost(event.peer, LinkInput.LOST, "reconnected")
        session = Session(
            heartbeat_interval=self._heartbeat_interval,
            heartbeat_timeout=self._heartbeat_timeout,
            now=now,
        )
        link = Link(event.peer, session, Reassembly(self._max_body_size), event.user_id)
        self._links[event.peer] = link
        if not self._bound:
            # In the background: a ZeroMQ DEALER holds the send until its security handshake
            # completes, and the receive loop must stay free to hear that it failed.
            hello = m.Hello(identity=self._identity, max_body_size=self._max_body_size)
            self._spawn_background(self._send_quietly(link, hello))

    def _on_auth_failed(self, event: AuthFailed) -> None:
        log.warning("authentication failed: %s", event.reason)
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_exception(AuthenticationError(event.reason))

    async def _on_received(self, event: Received) -> None:
        self._counters.bytes_in += sum(map(len, event.frames))
        link = self._links.get(event.peer)
        if link is None:
            self._drop("message from an unknown remote")
            return
        try:
            msg = decode(event.frames, max_body_size=self._max_body_size)
        except OversizeBodyError as exc:
            await self._refuse_oversize(link, exc)
            return
        if type(msg) is ChunkedHead:
            link.session.receive(msg.message, self._loop.time())
            await self._on_chunked_head(link, msg)
            return
        now = self._loop.time()
        link.session.receive(msg, now)  # type: ignore[arg-type]
        if type(msg) not in _TRANSFER_KINDS:
            link.saw_other(now)
        handler = self._HANDLERS[type(msg)]
        await handler(self, link, msg)

    async def _on_chunked_head(self, link: Link, head: ChunkedHead) -> None:
        try:
            link.incoming.begin(head)
        except OversizeBodyError as exc:
            stop = m.ChunkStop(transfer=head.transfer, reason="body exceeds max_body_size")
            await self._send(link, stop)
            await self._refuse_oversize(link, exc)

    async def _on_chunk(self, link: Link, msg: m.Chunk) -> None:
        try:
            whole = link.incoming.feed(msg)
        except ProtocolError:
            await self._send(link, m.ChunkStop(transfer=msg.transfer, reason="bad chunk"))
            raise
        if link.incoming.expects(msg.transfer):  # the last chunk needs no ack
            await self._send(link, m.ChunkAck(transfer=msg.transfer, amount=1))
        if whole is not None:
            await self._HANDLERS[type(whole)](self, link, whole)

    async def _on_chunk_ack(self, link: Link, msg: m.ChunkAck) -> None:
        if not link.outgoing.ack(msg.transfer, msg.amount):
            self._drop(f"ack of {msg.amount} for transfer {msg.transfer}, which we never sent")

    async def _on_chunk_stop(self, link: Link, msg: m.ChunkStop) -> None:
        link.outgoing.stop(msg.transfer)  # a transfer that just finished needs nothing

    async def _on_chunk_abort(self, link: Link, msg: m.ChunkAbort) -> None:
        link.incoming.abort(msg.transfer)  # one we never saw (its head failed) needs nothing

    async def _refuse_oversize(self, link: Link, exc: OversizeBodyError) -> None:
        self._drop(f"body of {exc.size} bytes exceeds max_body_size {self._max_body_size}")
        if isinstance(exc.message, m.Call) and link.session.is_open:
            code = MessageTooLargeError.code
            text = f"body of {exc.size} bytes exceeds the remote's max_body_size"
            await self._send(link, m.Error(id=exc.message.id, code=code, message=text))
        elif isinstance(exc.message, m.Result):
            future = link.pending.get(exc.message.id)
            link.session.call_input(exc.message.id, CallInput.REPLY)
            text = f"the reply of {exc.size} bytes exceeds max_body_size"
            if future is not None and not future.done():
                future.set_exception(MessageTooLargeError(text))
            elif future is None and self._forwarder is not None:
                code = MessageTooLargeError.code
                error = m.Error(id=exc.message.id, code=code, message=text)
                await self._forwarder.forward_reply(link, error)

    # -- one handler per message kind -------------------------------------------------------------

    async def _on_hello(self, link: Link, msg: m.Hello) -> None:
        if not self._bound:
            raise ProtocolError("Hello sent to a connecting peer")
        if not msg.identity or msg.max_body_size < 1:
            raise ProtocolError(f"bad Hello: {msg!r}")
        identity = link.user_id or msg.identity
        if ROUTE_SEPARATOR in identity:
            await self._refuse_hello(link, f"identity {identity!r} contains {ROUTE_SEPARATOR!r}")
            return
        link.session.handshake(identity, msg.max_body_size)
        previous = self._by_identity.get(identity)
        if previous is not None and previous is not link:
            log.warning("%r connected again; the older link is dropped", identity)
            await self._send_quietly(previous, m.Goodbye(reason=REPLACED))
            await self._link_lost(previous.key, LinkInput.LOST, REPLACED)
            await self._connection.disconnect(previous.key)  # type: ignore[union-attr]
        self._by_identity[identity] = link
        welcome = m.Welcome(
            identity=self._identity, assigned=identity, max_body_size=self._max_body_size
        )
        await self._send(link, welcome)
        self._peer_appeared(identity)

    async def _refuse_hello(self, link: Link, reason: str) -> None:
        """Turn a remote away during the handshake, telling it why."""
        self._drop(f"refused a Hello: {reason}")
        await self._send_quietly(link, m.Goodbye(reason=reason))
        await self._link_lost(link.key, LinkInput.LOST, reason)
        await self._connection.disconnect(link.key)  # type: ignore[union-attr]

    def _peer_appeared(self, name: str) -> None:
        self._link_opened(name)
        if self._forwarder is not None:
            self._forwarder.peer_changed(name, True, "")

    def _peer_vanished(self, name: str, reason: str) -> None:
        self._events.emit(PeerEvent(PeerEventKind.DISCONNECTED, name, reason))
        if self._forwarder is not None:
            self._forwarder.peer_changed(name, False, reason)

    async def _on_welcome(self, link: Link, msg: m.Welcome) -> None:
        if self._bound:
            raise ProtocolError("Welcome sent to a bound peer")
        if not msg.assigned or msg.max_body_size < 1:
            raise ProtocolError(f"bad Welcome: {msg!r}")
        link.session.handshake(msg.identity, msg.max_body_size)
        self._identity = msg.assigned
        if self._welcomed is not None and not self._welcomed.done():
            self._welcomed.set_result(None)
        else:
            self._counters.reconnects += 1
            log.info("reconnected to %r", msg.identity)
        self._link_opened(msg.identity)
        if self._forwarder is not None:
            self._forwarder.uplink_opened(link)

    def _link_opened(self, identity: str) -> None:
        """A handshake completed: wake ``wait_for_peer`` and tell the listeners."""
        for waiter in self._peer_waiters.pop(identity, []):
            if not waiter.done():
                waiter.set_result(None)
        self._events.emit(PeerEvent(PeerEventKind.CONNECTED, identity))

    async def _on_call(self, link: Link, msg: m.Call) -> None:
        self._counters.calls_in += 1
        if (msg.target is not None or self._forwarder is not None) and await self._forward_call(
            link, msg
        ):
            return
        peer_id = link.identity if msg.origin is None else scoped(link.identity, msg.origin)
        await self._dispatcher.call(link.key, peer_id, msg)

    async def _forward_call(self, link: Link, msg: m.Call) -> bool:
        """Pass on a call for a peer behind us (or one we do not serve); True once handled."""
        if msg.target is None and self._dispatcher.serves(msg.method):
            return False
        if self._forwarder is not None and await self._forwarder.forward_call(link, msg):
            return True
        if msg.target is None:
            return False  # ours to answer: the dispatcher says MethodNotFound
        text = f"no peer {scoped(self._identity, msg.target)!r} is reachable here"
        await self._send(link, m.Error(id=msg.id, code=ErrorCode.PEER_DISCONNECTED, message=text))
        return True

    async def _on_cancel(self, link: Link, msg: m.Cancel) -> None:
        if self._forwarder is not None and await self._forwarder.forward_control(link, msg):
            return
        await self._dispatcher.cancel(link.key, msg.id)

    async def _on_reply(self, link: Link, msg: m.Message) -> None:
        call_id: int = msg.id  # type: ignore[union-attr]
        if link.session.call_input(call_id, CallInput.REPLY) is None:
            self._drop(f"reply to unknown call {call_id}")
            return
        inbox = link.streams.get(call_id)
        if inbox is not None:
            inbox.put(msg)
            return
        future = link.pending.get(call_id)
        if future is not None:
            if not future.done():
                future.set_result(msg)
        elif self._forwarder is not None:
            await self._forwarder.forward_reply(link, msg)

    async def _on_stream_item(self, link: Link, msg: m.StreamItem) -> None:
        inbox = link.streams.get(msg.id)
        if inbox is None:
            if self._forwarder is None or not await self._forwarder.forward_reply(link, msg):
                self._drop(f"stream item for unknown stream {msg.id}")
        elif not inbox.put(msg):
            self._drop(f"stream {msg.id} sent past its credit")

    async def _on_credit(self, link: Link, msg: m.Credit) -> None:
        if self._forwarder is not None and await self._forwarder.forward_control(link, msg):
            return
        self._dispatcher.credit(link.key, msg.id, msg.amount)

    async def _on_upload(self, link: Link, msg: m.UploadItem | m.UploadEnd) -> None:
        if self._dispatcher.upload(link.key, msg) is False:
            self._drop(f"upload item for call {msg.id} past its credit or its end")

    async def _on_upload_credit(self, link: Link, msg: m.UploadCredit) -> None:
        window = link.uploads.get(msg.id)
        if window is not None and msg.amount >= 1:  # else the upload ended meanwhile
            window.grant(msg.amount)

    async def _on_peer_up(self, link: Link, msg: m.PeerUp) -> None:
        if not self._bound:
            raise ProtocolError("PeerUp sent to a connecting peer")
        name = self._routes.announce(link.key, link.identity, msg.peer)
        if name is not None:
            self._peer_appeared(name)

    async def _on_peer_down(self, link: Link, msg: m.PeerDown) -> None:
        if not self._bound:
            raise ProtocolError("PeerDown sent to a connecting peer")
        name = self._routes.withdraw(link.key, link.identity, msg.peer)
        if name is not None:
            self._peer_vanished(name, msg.reason or "gone")

    async def _on_ping(self, link: Link, msg: m.Ping) -> None:
        await self._send(link, m.Pong())

    async def _on_pong(self, link: Link, msg: m.Pong) -> None:
        """Liveness was recorded by ``session.receive``; nothing else to do."""

    async def _on_goodbye(self, link: Link, msg: m.Goodbye) -> None:
        reason = f"the remote closed ({msg.reason})"
        if not await self._link_lost(link.key, LinkInput.GOODBYE, reason):
            return  # we are closing too
        assert self._connection is not None
        if not self._bound and msg.reason == REPLACED:
            # Another live peer took our identity. Reconnecting would replace it in turn,
            # and the two would take turns for ever: this link stays down.
            log.warning("a newer connection took identity %r; not reconnecting", self._identity)
            await self._connection.aclose()
            return
        await self._connection.disconnect(link.key)

    _HANDLERS: Final[dict[type, Any]] = {
        m.Hello: _on_hello,
        m.Welcome: _on_welcome,
        m.Call: _on_call,
        m.Cancel: _on_cancel,
        m.Result: _on_reply,
        m.Failure: _on_reply,
        m.Error: _on_reply,
        m.Cancelled: _on_reply,
        m.Ping: _on_ping,
        m.Pong: _on_pong,
        m.Goodbye: _on_goodbye,
        m.StreamItem: _on_stream_item,
        m.StreamEnd: _on_reply,
        m.Credit: _on_credit,
        m.Chunk: _on_chunk,
        m.ChunkAck: _on_chunk_ack,
        m.ChunkStop: _on_chunk_stop,
        m.ChunkAbort: _on_chunk_abort,
        m.UploadItem: _on_upload,
        m.UploadEnd: _on_upload,
        m.UploadCredit: _on_upload_credit,
        m.PeerUp: _on_peer_up,
        m.PeerDown: _on_peer_down,
    }

    # -- links ending -----------------------------------------------------------------------------

    async def _link_lost(self, key: bytes, why: LinkInput, reason: str) -> bool:
        """Apply ``why`` (lost, expired, goodbye) to the link; end it if its session says so.

        Returns:
            Whether the link ended now: False for an unknown key, and for a link we are
            closing ourselves (``_close`` ends those).
        """
        link = self._links.get(key)
        if link is None:
            return False
        was_open = link.session.is_open
        if link.session.transition(why) is not LinkState.BROKEN:
            return False
        del self._links[key]
        if self._by_identity.get(link.identity) is link:
            del self._by_identity[link.identity]
        lost = PeerDisconnectedError(f"{link.identity or 'remote'}: {reason}")
        self._fail_pending(link, lost)
        link.outgoing.fail(lost)
        if self._forwarder is not None:
            await self._forwarder.link_lost(link, reason)
        link.session.forget_calls()
        await self._dispatcher.drop_link(key)
        # A transport that reconnects gets another try, within connect_timeout; but a remote
        # that turned us away on purpose (Goodbye before its Welcome) gets no retry.
        retry = why is not LinkInput.GOODBYE and (
            self._connection is not None and self._connection.reconnects
        )
        if self._welcomed is not None and not self._welcomed.done() and not retry:
            self._welcomed.set_exception(PeerDisconnectedError(reason))
        for name in self._routes.drop_link(key):
            self._peer_vanished(name, reason)
        if was_open:
            self._counters.disconnects += 1
            self._peer_vanished(link.identity, reason)
        return True

    def _fail_pending(self, link: Link, error: Exception) -> None:
        for inbox in link.streams.values():
            inbox.fail(error)
        for future in link.pending.values():
            if not future.done():
                future.set_exception(error)
                self._counters.count_error(type(error).__name__)

    async def _heartbeat_loop(self) -> None:
        loop = self._loop
        tick = min(self._heartbeat_interval, self._heartbeat_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for link in list(self._links.values()):
                try:
                    await self._heartbeat(link, now)
                except Exception:
                    log.exception("heartbeat of %r failed", link.identity)

    async def _heartbeat(self, link: Link, now: float) -> None:
        if link.session.expired(now):
            log.warning(
                "%r went silent for %s s", link.identity or link.key, self._heartbeat_timeout
            )
            if await self._link_lost(link.key, LinkInput.EXPIRE, "heartbeat lost"):
                await self._connection.disconnect(link.key)  # type: ignore[union-attr]
        elif link.session.is_open and link.session.ping_due(now):
            if self._bound:  # a bound transport's send never waits
                await self._send_quietly(link, m.Ping())
            else:  # a connected one waits while the remote reads nothing: not this loop
                self._spawn_background(self._send_quietly(link, m.Ping()))


class _Expiry:
    """What the timeout of one call cancels: the task that sends it and waits for the reply."""

    __slots__ = ("fired", "future", "task")

    def __init__(self, future: asyncio.Future[m.Message], task: asyncio.Task[Any] | None) -> None:
        self.future = future
        self.task = task
        self.fired = False


def _expire(expiry: _Expiry) -> None:
    """A call's timeout passed: cancel its task, unless the reply is already there."""
    if not expiry.future.done() and expiry.task is not None:
        expiry.fired = True
        expiry.task.cancel()


#: The link states a link is in until we close it (CLOSE applies to them).
_LIVE: Final = frozenset({LinkState.CONNECTING, LinkState.OPEN})

#: The message kinds that carry a body, and so may travel in chunks.
_BODY_KINDS: Final = frozenset({m.Call, m.Result, m.StreamItem, m.UploadItem})


#: The messages of chunked transfers themselves: they do not make a link count as shared.
_TRANSFER_KINDS: Final = frozenset({m.Chunk, m.ChunkAck, m.ChunkStop, m.ChunkAbort})


def _slices(body: m.PackedBody, size: Callable[[], int]) -> Iterator[bytes | memoryview]:
    """``body`` cut into chunks of ``size()`` bytes each, as views where it can (no copy)."""
    large = body if type(body) is m.LargeBody else m.LargeBody((cast(bytes, body),))
    return large.slices(size)


async def _after_bulk(link: Link, order_key: str | None) -> None:
    """Wait until no chunked call with ``order_key`` is being sent on ``link``."""
    while order_key is not None and (pending := link.bulk_keys.get(order_key)) is not None:
        await asyncio.shield(pending)


def _outcome(reply: m.Message) -> Body:
    """Turn a reply message into the value ``invoke`` returns or the error it raises."""
    if type(reply) is m.Result:
        try:
            return unpack_body(reply.body)
        except ProtocolError as exc:
            raise RPCInternalError(f"undecodable result: {exc}") from None
    if type(reply) is m.Failure:
        raise RPCUserError(reply.name, reply.repr, reply.traceback)
    if type(reply) is m.Error:
        raise error_for_code(reply.code, reply.message)
    if type(reply) is m.Cancelled:
        raise RPCCancelledError(reply.reason or "the remote cancelled the call")
    raise AssertionError(f"not a reply: {reply!r}")


def _call_outcome(future: asyncio.Future[m.Message]) -> str:
    """For the RPC log, from ``_await_reply``'s ``finally``: how the call ended."""
    if future.done() and not future.cancelled():
        error = future.exception()
        if error is not None:
            return type(error).__name__
        reply = future.result()
        if type(reply) is m.Error:
            return type(error_for_code(reply.code, "")).__name__
        return _REPLY_OUTCOMES.get(type(reply), "RPCInternalError")
    error = sys.exc_info()[1]  # the exception leaving _await_reply: timeout, cancellation
    return "ok" if error is None else type(error).__name__


#: What the caller of ``invoke`` gets for each kind of reply; errors by their code.
_REPLY_OUTCOMES: Final[dict[type, str]] = {
    m.Result: "ok",
    m.Failure: "RPCUserError",
    m.Cancelled: "RPCCancelledError",
}


def _make_transport(transport: object, address: object) -> Transport:
    if transport is None:
        return TCPTransport() if isinstance(address, TCPAddress) else ZeroMQTransport()
    if isinstance(transport, type) and issubclass(transport, Transport):
        return transport()
    if isinstance(transport, Transport):
        return transport
    raise TypeError(f"transport must be a Transport instance or class, not {transport!r}")


def _check_authenticator(authenticator: Any, *, bound: bool) -> Any:
    if authenticator is None:
        return None
    from .auth import AbstractClientAuthenticator, AbstractServerAuthenticator

    expected = AbstractServerAuthenticator if bound else AbstractClientAuthenticator
    if not isinstance(authenticator, expected):
        raise TypeError(
            f"authenticator of a {'bound' if bound else 'connecting'} peer must be an "
            f"{expected.__name__}, not {type(authenticator).__name__}"
        )
    return authenticator


def _check_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def _check_timeout(name: str, value: object) -> float | None:
    if value is None:
        return None
    seconds = _check_seconds(name, value)
    if not seconds >= 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return seconds


def _check_positive(name: str, value: object) -> float:
    seconds = _check_seconds(name, value)
    if not seconds > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return seconds


def _check_seconds(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    return float(value)


def _check_call_args(method: object, order_key: object, headers: Mapping[Any, Any] | None) -> None:
    if not isinstance(method, str) or not method:
        raise TypeError("method must be a non-empty str")
    if order_key is not None and not isinstance(order_key, str):
        raise TypeError(f"order_key must be a str or None, not {type(order_key).__name__}")
    if headers is None:
        return
    if not isinstance(headers, Mapping):
        raise TypeError("headers must be a mapping of str to str or bytes")
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str | bytes):
            raise TypeError(f"headers[{key!r}] must map a str to a str or bytes")
