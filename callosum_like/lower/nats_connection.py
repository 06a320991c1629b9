"""The two ends of a NATS connection of ours: the bound one and the connecting one.

Theory of operation: each ``Connection`` owns one NATS client (made by
``lower.nats_transport``), one subscription and the bounded ``EventQueue`` of ``lower.base``.
The subject and payload layouts are ``lower.nats_envelope``'s.

* Receiving: nats-py runs our callback for one subscription's messages one at a time, in
  order, in its own task. The callback decodes a payload and puts the events into the queue,
  waiting while it is full; meanwhile nats-py holds what arrives, up to the subscription's
  pending limits (``NATSTransport(max_pending_size=..., max_pending_messages=...)``). Past
  them nats-py drops messages and reports a slow consumer: we count it in ``dropped``, log it
  (rate-limited) and treat the remote it came from as lost (``Disconnected(slow=True)``), as
  we cannot tell what it lost. NATS has no per-publisher back-pressure: these limits are what
  bounds memory.
* Sending: ``lower.nats_publisher`` batches the small messages of a loop iteration and
  publishes a message above the server's ``max_payload`` (1 MiB by default; nats-py reads it
  from the server) as pieces, back to back (NATS keeps one connection's order on one
  subject). nats-py queues what we publish and writes it in the background: a send never
  waits for the network, only, rarely, for nats-py's buffer to be written out.
* Knocking (connecting side): a key ``<identity>.<instance>.<generation>``; the endpoint
  asks the bound side to know it (a ``KNOCK`` request), and reports ``Connected`` when it is
  answered. NATS answers "no responders" at once while nobody serves the subject: we try
  again after ``reconnect_interval``, doubling up to ``reconnect_max_interval``. Losing the
  link (a ``BYE``, NATS reconnecting, a slow consumer, ``disconnect()``) moves to the next
  generation: what the bound side still sends to the old key is ignored.
* Bound side: a key is known from its ``KNOCK`` (``Connected`` before its messages, with
  ``user_id`` set to its identity token when the server's permissions are trusted). Messages
  from a key not known (a remote from before our NATS connection broke, or a forger) are
  dropped and answered with one ``BYE``, so that a real remote knocks again. A reply subject
  outside the knocking identity's own inboxes is refused, so a knock cannot make us publish
  to someone else's subjects. When our NATS connection breaks, every remote is reported
  gone: they knock again once NATS is back.
* Closing: a ``BYE`` to the other side(s), a flush, then the client is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from ..errors import PeerClosedError, PeerDisconnectedError
from ..stats import DropLog
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
    TransportEvent,
)
from .nats_envelope import BYE, DATA, KNOCK, LAST, PART, REASSEMBLY_SLACK, Reassembly, Subjects
from .nats_publisher import Publisher

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["NATSConnection", "BoundNATS", "ConnectingNATS", "KNOCK_TIMEOUT", "CLOSE_TIMEOUT"]

log = logging.getLogger(__name__)

#: Seconds a knock waits for the bound side's answer before it is sent again. NATS answers
#: "no responders" at once when nobody serves the subject; this covers a lost answer.
KNOCK_TIMEOUT: Final = 2.0
#: Seconds ``aclose`` waits for the server to take our last messages (the BYEs).
CLOSE_TIMEOUT: Final = 2.0
#: Keys not known to the bound side that were told BYE, remembered so that each is told
#: once (a flood of forged messages must not make us flood back).
TOLD_KEYS: Final = 1024

_BYE_PAYLOAD: Final = bytes([BYE])
_KNOCK_PAYLOAD: Final = bytes([KNOCK])


class NATSConnection(Connection):
    """What both ends share: the NATS client, the queue, the limits, publishing.

    Args:
        client: A connected nats-py client, owned (and closed) by this connection.
        subjects: The service's subject layout.
        address: What ``local_address`` says.
        max_frame_size: The largest frame delivered; larger ones are dropped and counted.
    """

    def __init__(
        self, client: Client, subjects: Subjects, address: str, max_frame_size: int
    ) -> None:
        self._client = client
        self._subjects = subjects
        self._address = address
        self._max_frame_size = max_frame_size
        self._reassembly_limit = max_frame_size + REASSEMBLY_SLACK
        self._events = EventQueue()
        self._drop_log = DropLog(log)
        self._publisher = Publisher(client, self.drop)
        self._sub: Subscription | None = None
        self._closed = False

    @property
    def local_address(self) -> str:
        """See ``Connection.local_address``: ``servers/subject`` (``NATSAddress.from_url``)."""
        return self._address

    def take_directly(self, take: Take) -> None:
        """See ``Connection.take_directly``."""
        self._events.take_directly(take)

    async def receive(self) -> TransportEvent:
        """See ``Connection.receive``."""
        return await self._events.get()

    # -- what nats-py tells us -------------------------------------------------------------

    async def on_error(self, error: Exception) -> None:
        """nats-py's ``error_cb``: a slow consumer costs a remote; the rest is logged."""
        from nats.errors import SlowConsumerError

        if isinstance(error, SlowConsumerError):
            self.drop(f"NATS slow consumer on {error.subject}: the receive buffer is full")
            await self.slow_consumer(error.subject)
        elif "permissions violation" in str(error).lower():
            await self.refused(str(error))
        elif not self._closed:
            log.warning("NATS (%s): %s", self._address, str(error) or type(error).__name__)

    async def slow_consumer(self, subject: str) -> None:
        """A message on ``subject`` was dropped by nats-py: its remote lost something."""

    async def refused(self, reason: str) -> None:
        """The server refused to let us publish or subscribe somewhere (its permissions)."""
        log.warning("NATS (%s) refused us: %s", self._address, reason)

    async def on_disconnected(self) -> None:
        """nats-py's ``disconnected_cb``: the connection to the NATS server broke."""

    async def on_reconnected(self) -> None:
        """nats-py's ``reconnected_cb``: connected to a NATS server again."""

    # -- receiving ---------------------------------------------------------------------------

    async def subscribe(self, subject: str, pending_messages: int, pending_size: int) -> None:
        """Subscribe ``on_message`` to ``subject``, within the pending limits."""
        self._sub = await self._client.subscribe(
            subject,
            cb=self.on_message,
            pending_msgs_limit=pending_messages,
            pending_bytes_limit=pending_size,
        )

    async def on_message(self, msg: Msg) -> None:
        """One NATS message on our subscription."""
        raise NotImplementedError

    def drop(self, reason: str) -> None:
        """Count and log (rate-limited) a message we cannot deliver."""
        self.dropped += 1
        self._drop_log.dropped(reason)

    async def deliver(
        self, key: bytes, reassembly: Reassembly, kind: int, data: bytes, user_id: str | None
    ) -> None:
        """Decode a ``DATA``/``PART``/``LAST`` payload of ``key`` and queue its messages.

        ``data`` is the whole payload, its kind byte included.
        """
        messages, problem = reassembly.feed(kind, data, 1)
        if problem is not None:
            self.drop(problem)
        limit = self._max_frame_size
        for frames in messages:
            if max(map(len, frames)) > limit:
                self.drop(f"a message with a frame over {limit} bytes")
                continue
            await self._events.put(Received(key, frames, user_id))

    # -- sending -----------------------------------------------------------------------------

    async def publish(self, subject: str, frames: Sequence[Frame]) -> None:
        """Publish one message to ``subject`` (``Publisher.publish``)."""
        await self._publisher.publish(subject, frames)

    async def publish_quietly(self, subject: str, payload: bytes) -> None:
        """Publish a control payload after what was sent before it; lost if NATS is down."""
        await self._publisher.publish_quietly(subject, payload)

    # -- closing -----------------------------------------------------------------------------

    async def say_goodbye(self) -> None:
        """Tell the other side(s) that we are gone (before the client closes)."""

    async def aclose(self) -> None:
        """See ``Connection.aclose``: ``BYE``, a short flush, and the client closed."""
        if self._closed:
            return
        try:
            if self._client.is_connected:
                with contextlib.suppress(PeerClosedError, PeerDisconnectedError):
                    await self._publisher.flush()
                await self.say_goodbye()
                with contextlib.suppress(Exception):
                    await self._client.flush(timeout=CLOSE_TIMEOUT)  # type: ignore[arg-type]
        finally:
            self._closed = True
            self._events.close()
            await self._publisher.aclose()
            await asyncio.shield(self._client.close())


class BoundNATS(NATSConnection):
    """The bound end: serves every remote that knocks on ``<subject>.in.*.*.*``.

    Args:
        trusted: Whether the server's permissions confine each user to its identity token,
            so that ``Connected.user_id`` may be that token.
        client, subjects, address, max_frame_size: As for ``NATSConnection``.
    """

    bound = True
    reports_disconnects = True  # on a remote's BYE; one that vanished is the heartbeat's

    def __init__(
        self,
        client: Client,
        subjects: Subjects,
        address: str,
        max_frame_size: int,
        *,
        trusted: bool,
    ) -> None:
        super().__init__(client, subjects, address, max_frame_size)
        self._trusted = trusted
        self._known: dict[bytes, Reassembly] = {}
        self._told: OrderedDict[bytes, None] = OrderedDict()

    async def start(self, pending_messages: int, pending_size: int) -> None:
        """Subscribe to every remote's subject."""
        await self.subscribe(self._subjects.all_in, pending_messages, pending_size)

    def _user_id(self, key: bytes) -> str | None:
        return key.partition(b".")[0].decode() if self._trusted else None

    async def on_message(self, msg: Msg) -> None:
        """See ``NATSConnection.on_message``."""
        key = self._subjects.key_of(msg.subject)
        data = msg.data
        if key is None or not data:
            self.drop(f"an empty or misaddressed NATS message on {msg.subject}")
            return
        kind = data[0]
        if kind == KNOCK:
            await self._knocked(key, msg.reply)
        elif kind == BYE:
            if self._known.pop(key, None) is not None:
                await self._events.put(Disconnected(key, "the remote closed"))
        elif kind in (DATA, PART, LAST):
            reassembly = self._known.get(key)
            if reassembly is None:
                await self._unknown(key)
            else:
                await self.deliver(key, reassembly, kind, data, self._user_id(key))
        else:
            self.drop(f"a NATS payload of unknown kind {kind} from {key!r}")

    async def _knocked(self, key: bytes, reply: str) -> None:
        if not reply or not self._subjects.replies_to(key, reply):
            self.drop(f"a knock from {key!r} with a reply subject not its own: {reply!r}")
            return
        if key not in self._known:
            self._known[key] = Reassembly(self._reassembly_limit)
            self._told.pop(key, None)
            await self._events.put(Connected(key, self._user_id(key)))
        await self.publish_quietly(reply, _KNOCK_PAYLOAD)

    async def _unknown(self, key: bytes) -> None:
        """A message from a key we do not know: dropped; its sender is told once."""
        self.drop(f"a message from {key!r}, which did not knock (or was forgotten)")
        if key in self._told:
            return
        self._told[key] = None
        if len(self._told) > TOLD_KEYS:
            self._told.popitem(last=False)
        await self.publish_quietly(self._subjects.outbound(key), _BYE_PAYLOAD)

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``."""
        if self._closed:
            raise PeerClosedError("connection closed")
        if to is None or to not in self._known:
            raise PeerDisconnectedError(f"no connected remote with key {to!r}")
        await self.publish(self._subjects.outbound(to), frames)

    async def disconnect(self, peer: bytes) -> None:
        """See ``Connection.disconnect``: forget ``peer`` and tell it so (it knocks again)."""
        if self._known.pop(peer, None) is not None and not self._closed:
            await self.publish_quietly(self._subjects.outbound(peer), _BYE_PAYLOAD)

    async def slow_consumer(self, subject: str) -> None:
        """See ``NATSConnection.slow_consumer``: that remote is dropped (and told)."""
        key = self._subjects.key_of(subject)
        if key is not None and self._known.pop(key, None) is not None:
            reason = "too slow a consumer: the NATS receive buffer overflowed"
            await self._events.put(Disconnected(key, reason, slow=True))
            await self.publish_quietly(self._subjects.outbound(key), _BYE_PAYLOAD)

    async def on_disconnected(self) -> None:
        """See ``NATSConnection.on_disconnected``: every remote is gone (they knock again)."""
        if self._closed:
            return
        known, self._known = self._known, {}
        for key in known:
            await self._events.put(Disconnected(key, "the NATS connection broke"))

    async def say_goodbye(self) -> None:
        """See ``NATSConnection.say_goodbye``: a ``BYE`` to every remote."""
        for key in list(self._known):
            await self.publish_quietly(self._subjects.outbound(key), _BYE_PAYLOAD)


class ConnectingNATS(NATSConnection):
    """The connecting end: one remote, the endpoint serving the subject.

    Args:
        identity: This end's identity token, the first token of its keys.
        instance: A token unique to this connection, the second one.
        intervals: ``reconnect_interval`` and ``reconnect_max_interval``, in seconds.
        client, subjects, address, max_frame_size: As for ``NATSConnection``.
    """

    bound = False
    reconnects = True

    def __init__(
        self,
        client: Client,
        subjects: Subjects,
        address: str,
        max_frame_size: int,
        *,
        identity: str,
        instance: str,
        intervals: tuple[float, float],
    ) -> None:
        super().__init__(client, subjects, address, max_frame_size)
        self._prefix = f"{identity}.{instance}."
        self._generations = itertools.count()
        self._key = b""
        self._reassembly = Reassembly(self._reassembly_limit)
        self._connected = False
        self._intervals = intervals
        self._knocker: asyncio.Task[None] | None = None
        self._nudge = asyncio.Event()
        self._refused = False  # AuthFailed is reported once
        self._next_key()

    def _next_key(self) -> None:
        self._key = f"{self._prefix}{next(self._generations)}".encode()
        self._reassembly = Reassembly(self._reassembly_limit)

    async def start(self, pending_messages: int, pending_size: int) -> None:
        """Subscribe to our subjects, knock once, and keep knocking in the background."""
        subject = self._subjects.outbound(self._prefix.encode() + b"*")
        await self.subscribe(subject, pending_messages, pending_size)
        if not await self._knock():  # a server already there: Connected before we return
            self._start_knocking()

    async def _knock(self) -> bool:
        """Knock once; True once known (``Connected`` is queued)."""
        from nats.errors import Error as NATSError

        key = self._key
        try:
            await self._client.request(
                self._subjects.inbound(key), _KNOCK_PAYLOAD, timeout=KNOCK_TIMEOUT
            )
        except (TimeoutError, NATSError) as exc:
            log.debug("knock on %s: %s", self._address, type(exc).__name__)
            return False
        if key != self._key or self._closed:
            return False  # lost again meanwhile: the knocker knocks with the new key
        self._connected = True
        await self._events.put(Connected(CONNECTED_KEY))
        return True

    def _start_knocking(self) -> None:
        if self._closed or (self._knocker is not None and not self._knocker.done()):
            return
        self._knocker = asyncio.create_task(self._knock_until_known(), name="NATS knock")

    async def _knock_until_known(self) -> None:
        delay, longest = self._intervals
        while not self._closed:
            if self._client.is_connected and await self._knock():
                return
            self._nudge.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._nudge.wait()  # NATS is back, or the link was dropped
            delay = min(delay * 2, longest)

    async def on_message(self, msg: Msg) -> None:
        """See ``NATSConnection.on_message``."""
        data = msg.data
        if msg.subject != self._subjects.outbound(self._key):
            log.debug("ignored a NATS message for an earlier link: %s", msg.subject)
            return
        if not data:
            self.drop("an empty NATS message")
            return
        kind = data[0]
        if kind == BYE:
            await self._lost("the remote forgot us (it closed, or restarted)")
        elif kind in (DATA, PART, LAST):
            await self.deliver(CONNECTED_KEY, self._reassembly, kind, data, None)
        else:
            self.drop(f"a NATS payload of unknown kind {kind}")

    async def _lost(self, reason: str, *, slow: bool = False) -> None:
        """The link is gone: report it once, and knock again with the next key."""
        if self._closed:
            return
        was_connected, self._connected = self._connected, False
        self._next_key()
        if was_connected:
            await self._events.put(Disconnected(CONNECTED_KEY, reason, slow=slow))
        self._nudge.set()
        self._start_knocking()

    async def slow_consumer(self, subject: str) -> None:
        """See ``NATSConnection.slow_consumer``: our link lost a message; start anew."""
        if subject == self._subjects.outbound(self._key):
            await self._lost("too slow a consumer: the NATS receive buffer overflowed", slow=True)

    async def on_disconnected(self) -> None:
        """See ``NATSConnection.on_disconnected``."""
        await self._lost("the NATS connection broke")

    async def refused(self, reason: str) -> None:
        """See ``NATSConnection.refused``: our identity's subjects are not ours to use."""
        await super().refused(reason)
        if not self._refused:
            self._refused = True
            await self._events.put(AuthFailed(f"the NATS server refused: {reason}"))

    async def on_reconnected(self) -> None:
        """See ``NATSConnection.on_reconnected``: knock at once."""
        self._nudge.set()

    async def send(self, frames: Sequence[Frame], *, to: bytes | None = None) -> None:
        """See ``Connection.send``: only while the bound side knows us (after ``Connected``).

        Between a lost link and the answer to our next knock there is nobody to send to:
        what we published would be dropped there as from a stranger, and answered with a
        ``BYE`` that would cost the knock in progress its key.
        """
        if self._closed:
            raise PeerClosedError("connection closed")
        if not self._connected:
            raise PeerDisconnectedError("not connected: the bound side has not answered our knock")
        await self.publish(self._subjects.inbound(self._key), frames)

    async def disconnect(self, peer: bytes) -> None:
        """Drop the current link and knock anew (``Connected`` once known again).

        The Peer calls this when the remote went silent or said Goodbye. No
        ``Disconnected`` is reported for a link we drop ourselves.
        """
        if self._closed:
            return
        old = self._key
        self._connected = False
        self._next_key()
        await self.publish_quietly(self._subjects.inbound(old), _BYE_PAYLOAD)
        self._nudge.set()
        self._start_knocking()

    async def say_goodbye(self) -> None:
        """See ``NATSConnection.say_goodbye``: a ``BYE`` for our current key."""
        await self.publish_quietly(self._subjects.inbound(self._key), _BYE_PAYLOAD)

    async def aclose(self) -> None:
        """See ``Connection.aclose``; the knocker is stopped too.

        The knocker is taken once the connection counts as closed: one started while the
        goodbye went out (the Peer dropping the link as it closes) is stopped as well.
        """
        try:
            await super().aclose()
        finally:
            knocker = self._knocker
            if knocker is not None:
                knocker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await knocker
