"""The transport contract: what the Peer needs from any way of moving messages.

Theory of operation: a ``Transport`` makes ``Connection`` objects, either by binding (many
remotes may connect) or by connecting (exactly one remote). A connection moves *messages*
(lists of frames), never bytes: framing is the transport's job. Remotes are named by an
opaque ``bytes`` key that the transport chooses (a ZeroMQ routing id, a TCP connection
number); a connected endpoint always names its one remote ``CONNECTED_KEY``. The Peer maps
keys to identities.

A connection has four verbs:

* ``send(frames, to=key)`` — queue one message for one remote (``post`` does the same
  without a coroutine when nothing needs to wait: the Peer's hot path);
* ``receive()`` — the next ``TransportEvent``: a message (``Received``), or a notification
  that a remote appeared (``Connected``), went away (``Disconnected``), or refused our
  credentials (``AuthFailed``);
* ``disconnect(key)`` — forget one remote (and drop its connection where there is one);
* ``aclose()`` — stop everything and release every socket and task.

A connection may also let its consumer take messages *as they arrive*
(``take_directly``): while the consumer waits in ``receive()`` with nothing queued, a message
is handed to its ``take`` callback from the transport's own callback, which runs it until it
first waits (most messages never do) and hands what is left back as a ``Started``, which the
next ``receive()`` finishes before returning anything else (``take`` may also decline a
message, which then queues as usual). A message then costs no loop
iteration and no task step of the consumer's; its order among the others is unchanged. The
events a Peer's loop waits for are handled the same way either way; a transport that does
not offer it (the default) is used through ``receive()`` alone.

A *connected* endpoint that can reconnect (capability ``reconnects``) re-establishes a lost
connection by itself until it is closed: ``Disconnected`` when the connection drops, then
``Connected`` once it is back (the Peer then re-handshakes). Its ``disconnect(CONNECTED_KEY)``
drops the current connection (a remote that went silent) and lets it reconnect.

Order: a connection delivers each remote's messages in the order they were sent, as far as
the Peer relies on order (docs/PROTOCOL.md). A transport may deliver messages that the Peer
does not order relative to each other in another order: QUIC sends each call on a stream of
its own and keeps only the orders the Peer needs (``lower.lanes``: a call's own messages,
calls of one ``order_key``, and the handshake, cancellations and Goodbye as barriers that
nothing overtakes).

Identity: ``Connected.user_id`` is the identity the transport *proved* for the remote (a
CURVE key, a client certificate: ``lower.certificates``); the Peer uses it instead of the
identity the remote's Hello claims.

The conformance suite in ``tests/transports/conformance.py`` is the executable form of this
contract; every transport passes it.
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from ..addresses import Address
from ..errors import PeerClosedError
from ..wire.messages import value_class

if TYPE_CHECKING:
    from ..auth import AbstractClientAuthenticator, AbstractServerAuthenticator

__all__ = [
    "Frame",
    "Received",
    "Connected",
    "Disconnected",
    "AuthFailed",
    "TransportEvent",
    "Connection",
    "Transport",
    "EventQueue",
    "Started",
    "Take",
    "RECEIVE_QUEUE_SIZE",
    "CONNECTED_KEY",
    "check_reconnect_intervals",
]

Frame: TypeAlias = bytes | bytearray | memoryview

#: The key by which a *connected* endpoint names its one remote, in every event it reports.
CONNECTED_KEY: Final = b""

#: Messages a connection may hold between its socket readers and ``receive()``. When it is
#: full the readers stop reading, so the kernel's (or ZeroMQ's) buffers push back on senders.
RECEIVE_QUEUE_SIZE: Final = 1024


@value_class
class Received:
    """A message from remote ``peer``.

    Attributes:
        peer: The transport's key for the sender.
        frames: The message's frames: ``bytes``, or for a large frame the buffer it was
            received into (a ``bytearray`` or ``memoryview``), handed over without a copy.
        user_id: The authenticated user id of the sender (ZeroMQ CURVE), else ``None``.
    """

    peer: bytes
    frames: list[Frame]
    user_id: str | None = None


@value_class
class Connected:
    """Remote ``peer`` appeared. It precedes every ``Received`` from that key."""

    peer: bytes
    user_id: str | None = None


@value_class
class Disconnected:
    """Remote ``peer`` is gone; nothing more will arrive from it under this key.

    Attributes:
        peer: The transport's key for the remote.
        reason: Why, for logs and events.
        slow: The transport dropped the remote itself because it did not read what was
            sent to it (a slow consumer, or a slowloris), to keep memory bounded.
    """

    peer: bytes
    reason: str = ""
    slow: bool = False


@value_class
class AuthFailed:
    """The remote refused our credentials, or its keys were not the expected ones."""

    reason: str


TransportEvent: TypeAlias = Received | Connected | Disconnected | AuthFailed


class Connection(abc.ABC):
    """One bound or connected endpoint of a transport."""

    #: Whether this endpoint was bound (serves many remotes) or connected (one remote).
    bound: bool
    #: Whether a bound endpoint reports ``Disconnected`` when a remote goes away. ZeroMQ's
    #: ROUTER cannot (libzmq does not tell which routing id a dropped pipe had); the Peer's
    #: heartbeat and the remote's Goodbye cover that case.
    reports_disconnects: bool = True
    #: Whether a connected endpoint re-establishes a lost connection by itself and reports
    #: ``Connected`` again when it is back.
    reconnects: bool = False
    #: Messages the transport itself dropped (malformed envelopes, oversize frames, framing
    #: errors), each logged once; the Peer adds them to ``statistics().dropped_messages``.
    dropped: int = 0

    @property
    @abc.abstractmethod
    def local_address(self) -> str:
        """The address actually bound or connected to (with the real port for port 0)."""

    @abc.abstractmethod
    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """Queue one message for one remote.

        Args:
            frames: The frames of the message (not modified, not retained after return
                unless the transport documents zero-copy).
            to: The remote's key; ignored by a connected endpoint, which has one remote.

        Raises:
            PeerDisconnectedError: ``to`` is not (or no longer) a connected remote.
            PeerClosedError: The connection was closed.

        Cancellation: the message is either queued whole or not at all.
        """

    def post(self, frames: Sequence[Frame], *, to: bytes | None = None) -> Awaitable[None] | None:
        """``send``, without a coroutine when the message can be queued at once.

        The hot path of a Peer: a small message is queued from the caller's own frame and
        ``None`` returned; only when the transport must wait (its buffer is full) is what
        is left of the send returned, for the caller to await before anything else. The
        default returns ``send(frames, to=to)`` itself.

        Raises:
            The errors of ``send``, either at once or from the returned awaitable.

        Cancellation: as for ``send``, of the returned awaitable.
        """
        return self.send(frames, to=to)

    @abc.abstractmethod
    async def receive(self) -> TransportEvent:
        """Wait for the next event.

        Raises:
            PeerClosedError: The connection was closed (also wakes a pending ``receive``).

        Cancellation: no event is lost; the next call returns it.
        """

    def take_directly(self, take: Take) -> None:
        """Hand messages to ``take`` as they arrive while ``receive()`` waits (module doc).

        The default does nothing: every event comes through ``receive()``.

        Cancellation: a ``receive()`` cancelled while it finishes what ``take`` left cancels
        that message's handling (the consumer's own, as if it had been handling it itself).
        """
        del take

    @abc.abstractmethod
    async def disconnect(self, peer: bytes) -> None:
        """Forget remote ``peer``, closing its connection where it has one of its own.

        Unknown keys are ignored. No ``Disconnected`` event is produced for it. On a
        connected endpoint that ``reconnects``, a new connection follows (``Connected``).
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every socket and stop every task of this connection. Idempotent.

        Cancellation: resources are released even when the caller is cancelled.
        """


class Transport(abc.ABC):
    """Makes connections. Instances are cheap and carry options only."""

    @abc.abstractmethod
    async def bind(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractServerAuthenticator | None = None,
    ) -> Connection:
        """Listen at ``address`` for any number of remotes.

        Raises:
            OSError: The address cannot be bound.
            ValueError: The address or the authenticator does not suit this transport.
        """

    @abc.abstractmethod
    async def connect(
        self,
        address: Address,
        *,
        max_frame_size: int,
        authenticator: AbstractClientAuthenticator | None = None,
    ) -> Connection:
        """Connect to one remote at ``address``.

        Raises:
            OSError: The connection cannot be made (where the transport can tell at once).
            ValueError: The address or the authenticator does not suit this transport.
        """


class Started:
    """A coroutine already run up to where it first waited: ``await`` it to finish it.

    Awaiting it resumes the coroutine in the awaiting task (cancelling that task cancels the
    coroutine); ``close()`` abandons it instead (``GeneratorExit`` at its ``await``).
    """

    __slots__ = ("_coro", "_waiting")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting: object) -> None:
        self._coro = coro
        self._waiting = waiting

    @classmethod
    def start(cls, coro: Coroutine[Any, Any, None]) -> Started | None:
        """Run ``coro`` until it first waits; ``None`` if it finished (its errors propagate)."""
        try:
            waiting = coro.send(None)
        except StopIteration:
            return None
        return cls(coro, waiting)

    def __await__(self) -> Generator[Any, Any, None]:
        """Wait for what the coroutine waits for, and resume it, until it returns."""
        coro, waiting = self._coro, self._waiting
        while True:
            try:
                sent = yield waiting
            except BaseException as exc:  # cancellation (or close) goes to the coroutine
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(sent)
                except StopIteration:
                    return

    def close(self) -> None:
        """Abandon the coroutine."""
        self._coro.close()


#: What a consumer gives ``take_directly``: handles one message now and returns ``True``, or
#: what is left of it (a ``Started``), or ``False`` to leave the message to ``receive()``.
Take: TypeAlias = Callable[[Received], Started | bool]


class EventQueue:
    """The bounded queue between a connection's socket readers and its ``receive()``.

    Producers either ``await put(event)`` (waits while the queue is full) or call
    ``offer(event)`` from a callback, which always queues and returns False once the queue
    is full: the producer then stops reading and registers ``when_space(resume)``, called
    once the consumer has taken the queue down to half. ``close()`` discards what is
    queued and makes every current and future ``get()`` raise ``PeerClosedError``.

    With ``take_directly(take)``, a message offered while the consumer waits in ``get()``
    with nothing queued goes to ``take`` at once instead (see the module doc); what ``take``
    could not finish is finished by that ``get()`` before it returns the next event.
    """

    def __init__(self, maxsize: int = RECEIVE_QUEUE_SIZE) -> None:
        self._items: deque[TransportEvent] = deque()
        self._maxsize = maxsize
        self._getter: asyncio.Future[None] | None = None
        self._space: list[Callable[[], object]] = []
        self._closed = False
        self._take: Take | None = None
        self._taking = False  # in ``take``: what arrives meanwhile is queued
        self._started: Started | None = None  # what ``take`` left for ``get()`` to finish

    def __len__(self) -> int:
        return len(self._items)

    def take_directly(self, take: Take) -> None:
        """Hand ``Received`` events to ``take`` while the consumer waits (class doc)."""
        self._take = take

    def offer(self, event: TransportEvent) -> bool:
        """Queue ``event`` now (or have it taken); return whether there is room for more."""
        if self._closed:
            return True
        getter = self._getter
        if getter is not None and not getter.done():
            # The consumer waits: nothing is queued, and nothing is left to finish.
            if self._take is not None and type(event) is Received and not self._taking:
                self._taking = True
                try:
                    started = self._take(event)
                finally:
                    self._taking = False
                if type(started) is Started:
                    if self._closed:
                        started.close()
                    else:
                        self._started = started
                        if not getter.done():
                            getter.set_result(None)
                    return True
                if started:
                    return True
            getter.set_result(None)  # declined, or not for ``take``: queued for ``get()``
        self._items.append(event)
        return len(self._items) < self._maxsize

    def when_space(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the queue has drained to half (at once if it has)."""
        if len(self._items) <= self._maxsize // 2 or self._closed:
            callback()
        else:
            self._space.append(callback)

    async def put(self, event: TransportEvent) -> None:
        """Queue ``event``, waiting while the queue is full; dropped once closed."""
        if not self.offer(event):
            await self.wait_space()

    async def wait_space(self) -> None:
        """Wait until the queue has drained to half (or is closed)."""
        if self._closed:
            return
        room: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def make_room() -> None:
            if not room.done():
                room.set_result(None)

        self.when_space(make_room)
        await room

    async def get(self) -> TransportEvent:
        """The next event.

        Raises:
            PeerClosedError: The queue was closed.
        """
        items = self._items
        while True:
            started = self._started
            if started is not None:  # finish what ``take`` began before anything else
                self._started = None
                await started
            if items:
                break
            if self._closed:
                raise PeerClosedError("connection closed")
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        event = items.popleft()
        if self._space and len(items) <= self._maxsize // 2:
            callbacks, self._space = self._space, []
            for callback in callbacks:
                callback()
        return event

    def close(self) -> None:
        """Discard queued events and wake every getter with ``PeerClosedError``."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        if self._started is not None:
            self._started.close()
            self._started = None
        if self._getter is not None and not self._getter.done():
            self._getter.set_result(None)
        callbacks, self._space = self._space, []
        for callback in callbacks:
            callback()


def check_reconnect_intervals(interval: object, max_interval: object) -> tuple[float, float]:
    """Validate the reconnection options a transport takes; return them as floats.

    Raises:
        TypeError: One of them is not a number.
        ValueError: One of them is not positive, or ``reconnect_max_interval`` is the smaller.
    """
    values = []
    for name, value in (("reconnect_interval", interval), ("reconnect_max_interval", max_interval)):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
        values.append(float(value))
    if values[1] < values[0]:
        raise ValueError("reconnect_max_interval must not be less than reconnect_interval")
    return values[0], values[1]
