"""The Peer: one endpoint that serves and invokes over one transport connection.

Theory of operation: ``Peer`` is the public face and the lifecycle; what it does lives in
rooms of their own, each given its collaborators rather than reaching back:

* ``options``: the arguments, checked once (``PeerOptions``), and the transport they name;
* ``remotes``: the links (one ``link.Link`` per remote: its session, what is pending on it,
  its send path), the handshake, identities, names announced by relays, heartbeats, and
  links ending through their session's table;
* ``calls``: the caller's side, ``invoke`` and ``stream``, timeouts and outcomes;
* ``receiving``: one handler per message kind for what the transport delivers;
* ``dispatch``: the serving side (handlers, orderings, the concurrency cap).

``__aenter__`` binds or connects the transport, starts the dispatcher and two tasks (the
receive loop and the heartbeats) and, on the connecting side, waits for the handshake
(``Hello`` -> ``Welcome``). The receive loop hands each event to the ``Receiver`` inside its
own ``try``: a bad message costs that message (dropped, logged, counted), never the loop. If
receiving itself fails (the transport raises, or reports itself closed while we are not
closing), the loop logs why at ERROR and ends every link, so no pending call waits for a
reply that cannot come. ``aclose`` fails our pending calls with ``PeerClosedError``, has our
running handlers answer ``Cancelled``, says Goodbye to every open remote, and releases
everything.

Federation (docs/federation.md): a relay passes a ``Forwarder`` at construction and uses the
documented surface for it (``lookup``, ``uplink``, ``reconnects`` and the ``Link``'s
``send``); a peer without one behaves exactly as before. Every link coming and going is a
``PeerEvent`` (``events``); counters and gauges live in ``stats``, and each call made or
served is logged to ``callosum_like.rpc`` when enabled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Coroutine,
    Iterable,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

from .addresses import AddressLike
from .calls import UPLOAD_WINDOW, Caller
from .dispatch import Dispatcher
from .errors import PeerClosedError, PeerDisconnectedError, RPCTimeoutError
from .events import DEFAULT_EVENT_BUFFER, EventHub, EventListener, PeerEvents
from .forwarding import Forwarder
from .heartbeats import keep_alive
from .interception import InterceptedCaller
from .interceptors import Interceptor, InterceptorChain
from .link import Link
from .lower.base import Connection, Transport
from .options import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_PENDING,
    PeerOptions,
    check_count,
    check_names,
    check_timeout,
)
from .ordering import Ordering
from .receiving import Receiver
from .remotes import Remotes
from .request import Body, Handler, Headers, StreamHandler
from .session import LinkInput, LinkState
from .stats import Counters, DropLog, Gauges, PeerStatistics
from .transfers import DEFAULT_CHUNK_SIZE
from .wire.codec import MAX_HEADER_SIZE

if TYPE_CHECKING:
    from .auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = ["Peer", "Link", "Forwarder", "DEFAULT_CONNECT_TIMEOUT", "DEFAULT_MAX_PENDING"]

log = logging.getLogger(__name__)

#: The states of a link that a failed send still ends (a suspended one too).
_LIVE_LINK: Final = frozenset({LinkState.OPEN, LinkState.SUSPENDED})


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
        resume_timeout: Seconds a link's session is kept after its connection broke, for the
            connecting side to resume it on a new one: calls, handlers and streams carry on,
            each handler runs once. ``0`` (the default) ends the link at once. Takes effect
            when both sides set it (docs/reliability.md).
        max_unacked_bytes: Bytes a resumable link keeps of what it sent until the remote
            acknowledges them; past it the session ends. Default: 256 MiB, or twice
            ``max_body_size`` if larger.
        forwarder: For relays: the hooks that pass calls on (``remotes.Forwarder``,
            docs/federation.md). Others leave it ``None``.
        interceptors: ``Interceptor`` instances around every call made and request served,
            the first outermost (docs/observability.md).

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument has a wrong value (both or neither of ``bind``/``connect``,
            a negative timeout, ...).
    """

    #: Items of a streamed body (``invoke`` of an async iterable) that may run ahead of the
    #: handler reading them.
    UPLOAD_WINDOW: Final = UPLOAD_WINDOW

    def __repr__(self) -> str:
        options = self._options
        side = "bind" if options.bound else "connect"
        return f"<Peer {self.identity!r} {side}={options.address} {self._state}>"

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
        resume_timeout: float = 0.0,
        max_unacked_bytes: int | None = None,
        forwarder: Forwarder | None = None,
        interceptors: Iterable[Interceptor] | None = None,
    ) -> None:
        self._options = options = PeerOptions.build(
            bind=bind,
            connect=connect,
            transport=transport,
            authenticator=authenticator,
            identity=identity,
            ordering=ordering,
            max_concurrency=max_concurrency,
            max_pending=max_pending,
            invoke_timeout=invoke_timeout,
            execute_timeout=execute_timeout,
            compress=compress,
            max_body_size=max_body_size,
            chunk_size=chunk_size,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            connect_timeout=connect_timeout,
            resume_timeout=resume_timeout,
            max_unacked_bytes=max_unacked_bytes,
            interceptors=interceptors,
        )
        self._counters = Counters()
        self._interceptors = chain = (
            InterceptorChain(options.interceptors) if options.interceptors else None
        )
        self._drop_log = DropLog(log)
        self._dispatcher = Dispatcher(
            send=Link.post_reply,  # type: ignore[arg-type]  # its links are its keys
            default_ordering=options.ordering,
            max_concurrency=options.max_concurrency,
            max_pending=options.max_pending,
            execute_timeout=options.execute_timeout,
            counters=self._counters,
            interceptors=chain,
        )
        self._events = EventHub()
        self._remotes = Remotes(
            options=options,
            counters=self._counters,
            dispatcher=self._dispatcher,
            events=self._events,
            forwarder=forwarder,
            spawn=self._spawn,
            drop=self._drop,
        )
        self._caller = Caller(
            counters=self._counters,
            invoke_timeout=options.invoke_timeout,
            link_gone=self._link_gone,
        )
        #: Where calls go: through the interceptors, or (none) straight to the Caller.
        self._calls = InterceptedCaller(self._caller, chain) if chain else self._caller
        self._connection: Connection | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._state = "new"
        #: The loop we run on, from ``open`` on (``asyncio.get_running_loop`` is a ``getpid``
        #: system call on Python 3.11).
        self._loop: asyncio.AbstractEventLoop

    # -- public surface -------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """Our identity (as assigned by the bound side, once connected)."""
        return self._remotes.identity

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
        return self._remotes.peers

    def events(self, maxsize: int = DEFAULT_EVENT_BUFFER) -> PeerEvents:
        """An async iterator of ``PeerEvent``: remotes connecting and going away.

        Use it as ``async with peer.events() as events: async for event in events: ...``.
        Events from the moment of this call on are kept; a consumer that falls more than
        ``maxsize`` events behind loses the oldest (counted in ``events.dropped``). The
        iteration ends when the peer closes.

        Raises:
            TypeError, ValueError: ``maxsize`` is not a positive int.
        """
        check_count("maxsize", maxsize)
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
        self._check_open()
        route = self._remotes.route
        return await self._calls.invoke(route, method, body, order_key, to, timeout, headers)

    async def invoke_all(
        self,
        method: str,
        body: Body = None,
        *,
        to: Iterable[str] | None = None,
        timeout: float | None = None,
        headers: Headers | None = None,
    ) -> dict[str, Any]:
        """Call ``method`` on many remotes at once; map each to its result or its error.

        The body is packed once, whatever the number of remotes. An identity with several
        links is called once, on its most recently opened link.

        Args:
            method: As for ``invoke``.
            body: Any msgpack value (not a streamed body).
            to: The identities to call (direct, or names behind relays); ``None`` for every
                remote in ``peers``. Repeated names are called once.
            timeout: Seconds for the whole fan-out (default ``invoke_timeout``): a remote
                that has not answered by then maps to ``RPCTimeoutError`` (a ``TimeoutError``)
                and its handler is cancelled.
            headers: As for ``invoke``.

        Returns:
            Each identity, in the order of ``to`` (of ``peers`` for ``None``), mapped to the
            value its handler returned or to the exception its call raised, as
            ``asyncio.gather(..., return_exceptions=True)`` gives them; a name no link
            reaches maps to ``UnknownPeerError``.

        Raises:
            TypeError, ValueError: Misused arguments (``to`` a single str, for one);
                ``body`` not msgpack-serializable. Nothing was sent then.
            PeerClosedError: This peer is not open.

        Cancellation: cancelling the caller cancels every call and their remote handlers.
        """
        self._check_open()
        if isinstance(body, AsyncIterable):
            raise TypeError("invoke_all sends one body to all; a streamed body cannot be shared")
        names = sorted(self.peers) if to is None else check_names("to", to)
        return await self._calls.call_all(
            self._remotes.route, names, method, body, timeout=timeout, headers=headers
        )

    def stream(
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

        Args: as for ``invoke`` (``method`` names an async generator handler; ``body`` is one
            msgpack value; the stream's end is ordered like a reply). ``timeout`` is seconds
            for the whole stream, counted only while this iterator waits for the next item.

        Yields:
            Each item the remote generator yields, in order.

        Raises:
            The errors of ``invoke``; ``RPCInternalError`` when the method is not a stream.
        """
        return self._calls.stream(
            self._route, to, method, body, order_key=order_key, timeout=timeout, headers=headers
        )

    async def wait_for_peer(self, identity: str, timeout: float | None = None) -> None:
        """Wait until a remote named ``identity`` has connected (returns at once if it is).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            PeerClosedError: This peer closed meanwhile.
        """
        self._check_open()
        timeout = check_timeout("timeout", timeout)
        await self._remotes.wait_for(identity, timeout)

    def statistics(self) -> PeerStatistics:
        """A snapshot of this peer's counters and gauges (see ``PeerStatistics``)."""
        running = self._dispatcher.active
        gauges = Gauges(
            calls_in_flight=self._remotes.calls_in_flight,
            requests_running=running,
            requests_queued=self._dispatcher.running - running,
            connected_peers=len(self.peers),
            transport_dropped=self._connection.dropped if self._connection else 0,
        )
        return self._counters.snapshot(gauges)

    # -- the surface a relay builds on (docs/federation.md) ---------------------------------------

    def lookup(self, name: str) -> tuple[Link, str | None] | None:
        """The link that reaches ``name``, and the ``Call.target`` to send with.

        ``name`` is a direct identity or a name a relay below announced; ``None`` when no
        connected remote has it.
        """
        return self._remotes.lookup(name)

    @property
    def uplink(self) -> Link | None:
        """A connecting peer's link while it is open; ``None`` otherwise (and when bound)."""
        return self._remotes.uplink

    @property
    def reconnects(self) -> bool:
        """Whether this peer's connection re-establishes itself when lost (once open)."""
        return self._connection is not None and self._connection.reconnects

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
        if self._interceptors is not None:
            self._interceptors.attach(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _open(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        options = self._options
        max_frame = options.max_body_size + MAX_HEADER_SIZE
        self._dispatcher.start()
        self._caller.start(loop)
        if options.bound:
            self._connection = await options.transport.bind(
                options.address,
                max_frame_size=max_frame,
                authenticator=options.authenticator,  # type: ignore[arg-type]
            )
        else:
            self._remotes.welcomed = welcomed = loop.create_future()
            self._connection = await options.transport.connect(
                options.address,
                max_frame_size=max_frame,
                authenticator=options.authenticator,  # type: ignore[arg-type]
            )
        self._remotes.start(self._connection, loop.time)
        receiver = Receiver(
            remotes=self._remotes,
            dispatcher=self._dispatcher,
            counters=self._counters,
            drop=self._drop,
            clock=loop.time,
        )
        self._connection.take_directly(receiver.take)
        self._loops = [
            asyncio.create_task(
                receiver.run(self._connection.receive, self._closing, repr(self)),
                name=f"{self!r} receive",
            ),
            asyncio.create_task(keep_alive(self._remotes, loop.time), name=f"{self!r} heartbeat"),
        ]
        if not options.bound:
            try:
                async with asyncio.timeout(options.connect_timeout):
                    await welcomed
            except TimeoutError:
                raise RPCTimeoutError(
                    f"no handshake from {options.address} within connect_timeout "
                    f"{options.connect_timeout} s"
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
        self._remotes.fail_all(PeerClosedError("the peer was closed"))
        await self._dispatcher.aclose()  # its Cancelled replies still go out on open links
        await self._remotes.say_goodbye()
        tasks = [*self._loops, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._caller.deadlines.clear()
        if self._connection is not None:
            await self._connection.aclose()
        self._remotes.end_links()
        self._state = "closed"
        if self._interceptors is not None:
            self._interceptors.detach(self)

    # -- wiring -----------------------------------------------------------------------------------

    def _closing(self) -> bool:
        return self._state in ("closing", "closed")

    def _check_open(self) -> None:
        if self._state != "open":
            raise PeerClosedError(
                "the peer is closed"
                if self._state in ("closing", "closed")
                else "the peer is not open; use 'async with'"
            )

    def _route(self, to: str | None) -> tuple[Link, str | None]:
        self._check_open()
        return self._remotes.route(to)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _drop(self, reason: str) -> None:
        self._counters.dropped_messages += 1
        self._drop_log.dropped(reason)

    async def _link_gone(self, link: Link, error: PeerDisconnectedError) -> None:
        if link.session.state in _LIVE_LINK:  # not ended meanwhile
            await self._remotes.lose(link, LinkInput.LOST, str(error))
