"""Link events: a remote peer connected or went away.

Theory of operation: the Peer emits a ``PeerEvent`` each time a link completes its handshake
(``CONNECTED``) and each time an open link ends (``DISCONNECTED``, with the reason). One
identity may have several links at once (several connections of one principal): each event
names its link (``link``, a number unique within the Peer) and says how many open links the
identity has after it (``links``), so ``links == 0`` on a ``DISCONNECTED`` is the identity
leaving ``peer.peers``. Any number of listeners receive them:

* ``peer.add_event_listener(callback)``: a plain function, called synchronously from the
  receive loop. It must not block; an exception it raises is logged and ignored.
* ``async with peer.events() as events: async for event in events:``: an async iterator
  with a bounded buffer. When a consumer falls more than ``maxsize`` events behind, the
  oldest are dropped (and counted in ``events.dropped``) rather than letting memory grow;
  the iteration ends when the peer closes.

Only ``peer`` uses this module; it does no I/O of its own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

__all__ = ["PeerEvent", "PeerEventKind", "PeerEvents", "EventHub", "EventListener"]

log = logging.getLogger(__name__)

#: Events one ``peer.events()`` iterator holds before it drops the oldest.
DEFAULT_EVENT_BUFFER: Final = 1024


class PeerEventKind(enum.Enum):
    """What happened to a link."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A remote connected (handshake complete) or its link ended.

    Events compare equal by what happened to whom (``kind``, ``identity``, ``reason``);
    ``link`` and ``links`` say which connection it was and are left out of comparisons.

    Attributes:
        kind: ``PeerEventKind.CONNECTED`` or ``PeerEventKind.DISCONNECTED``.
        identity: The remote's identity (on a connecting peer: the bound peer's identity), or
            a name announced by a relay below.
        reason: Why a link ended (``"heartbeat lost"``, ``"the remote closed (...)"``, ...);
            empty for ``CONNECTED``.
        link: The link this is about: a number unique among this Peer's links, the same in
            a link's ``CONNECTED`` and ``DISCONNECTED`` (for an announced name: the link to
            the relay that announced it).
        links: Open links ``identity`` has once this event happened: ``1`` for its first
            connection, more for further concurrent ones, ``0`` when it left ``peer.peers``.
    """

    kind: PeerEventKind
    identity: str
    reason: str = ""
    link: int = field(default=0, compare=False)
    links: int = field(default=0, compare=False)


EventListener = Callable[[PeerEvent], None]


class EventHub:
    """The listeners of one Peer; ``emit`` calls each of them."""

    def __init__(self) -> None:
        self._listeners: list[EventListener] = []
        self._iterators: set[PeerEvents] = set()

    def add(self, listener: EventListener) -> None:
        """Call ``listener`` for every event from now on."""
        if not callable(listener):
            raise TypeError("an event listener must be callable with one PeerEvent")
        self._listeners.append(listener)

    def remove(self, listener: EventListener) -> None:
        """Stop calling ``listener``; KeyError if it was not added."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            raise KeyError("this listener was not added") from None

    def subscribe(self, maxsize: int) -> PeerEvents:
        """A new iterator that keeps every event from now on (at most ``maxsize``)."""
        events = PeerEvents(self, maxsize)
        self._iterators.add(events)
        return events

    def unsubscribe(self, events: PeerEvents) -> None:
        """Stop feeding ``events``."""
        self._iterators.discard(events)

    def emit(self, event: PeerEvent) -> None:
        """Hand ``event`` to every listener and iterator."""
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener %r failed on %r", listener, event)
        for events in self._iterators:
            events.deliver(event)

    def close(self) -> None:
        """The peer closed: every iterator ends once it has drained its buffer."""
        for events in list(self._iterators):
            events.end()
        self._iterators.clear()
        self._listeners.clear()


class PeerEvents:
    """An async iterator of ``PeerEvent`` from ``peer.events()``; see the module doc.

    Events that happen after ``peer.events()`` returns are kept, even before the first
    ``__anext__``. Leave the ``async with`` (or call ``aclose``) to stop receiving.
    """

    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self._hub = hub
        self._maxsize = maxsize
        self._buffer: deque[PeerEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        #: Events dropped because this consumer fell more than ``maxsize`` behind.
        self.dropped = 0

    def deliver(self, event: PeerEvent) -> None:
        """Keep ``event`` for the consumer (the hub calls this); the oldest goes when full."""
        if len(self._buffer) >= self._maxsize:
            self._buffer.popleft()
            self.dropped += 1
            if self.dropped == 1:
                log.warning("a peer.events() consumer fell behind; the oldest events are dropped")
        self._buffer.append(event)
        self._wake()

    def end(self) -> None:
        """No event will come again: the iteration ends once the kept ones are taken."""
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> PeerEvent:
        while not self._buffer:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._buffer.popleft()

    async def aclose(self) -> None:
        """Stop receiving events; a pending ``__anext__`` ends the iteration."""
        self._hub.unsubscribe(self)
        self.end()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
