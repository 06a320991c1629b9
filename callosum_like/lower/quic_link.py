"""One QUIC connection: lanes on streams, stamps and barriers, identity, flow and closing.

Theory of operation: ``QUICLink`` is the asyncio protocol around one aioquic
``QuicConnection`` (aioquic is sans-IO; its ``QuicConnectionProtocol`` moves its datagrams
and runs its timers). Both sides send on unidirectional streams they open themselves: each
outgoing message gets its lane from ``lower.lanes.LanePlanner`` (one stream per open lane,
finished after the lane's last message) and a stamp frame from ``LaneSender``; each message
is framed on its stream as on TCP (``wire.framing``: the stamp, then its frames). On receipt
every stream has its own ``FrameDecoder``, and ``LaneGate`` releases the messages in an order
that keeps each barrier (handshake, Cancel, Goodbye) in its place.

Events go to the owning endpoint's ``EventQueue`` (``lower.quic``): ``Connected`` once the
TLS handshake is complete (on a bound endpoint with a ``cafile``, once the client's
certificate is verified and its identity derived: ``lower.certificates``), ``Received`` for
each released message, and one ``Disconnected`` when the connection terminates (idle
timeout, the remote's close, a protocol violation). A client certificate that is missing
where one is required, or that does not verify, or whose identity the hook refuses, closes
the connection with ``CERTIFICATE_REFUSED`` before anything the client sent is delivered; the
client reports ``AuthFailed``.

A cancellation resets a stream (``_reset_lane``; the planner says which): the reset's error
code counts the stream's messages (``lanes.reset_code``), and the receiving side (``_reset``)
counts those that never came as delivered for the barrier after them, drops the stream's
unfinished message, and takes the stream's final size back into its credit.

Bad input costs one connection: a stream that breaks the framing (a frame over
``max_frame_size``), a bad stamp, a reset whose count contradicts what arrived: the
connection is closed with ``PROTOCOL_VIOLATION``, the loss counted once in ``dropped`` and
logged once.

Flow, receiving: the connection's receive credit (MAX_DATA) follows what the endpoint's
``receive()`` has taken (``ReceiveCredit``; ``taken`` returns a message's bytes), so a Peer
that does not read holds at most ``receive_window`` bytes of unread messages per connection.

Flow, sending: aioquic buffers what we send until it is acknowledged. A *connected*
endpoint's sender waits (``drain``) while more than ``HIGH_WATER`` bytes are unacknowledged,
until under a quarter of it; a *bound* endpoint never waits for one remote (as TCP's: the
remote might be waiting for us), and drops a remote with more than ``max_unsent_size``
unacknowledged (its open streams counted too: ``STREAM_OVERHEAD``).

Closing: ``shut()`` finishes every open lane, waits (at most ``CLOSE_TIMEOUT``) until the
remote has acknowledged everything sent, so that our last messages (a Peer's last replies
and its Goodbye) are not cut off, then closes the connection.

aioquic has no public API for four things this needs; each is marked here: the bytes a
stream holds unacknowledged, whether the remote has taken everything, asking a client for
its certificate (and reading the one it sent), its connection-level receive limit, and a
reset stream's final size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Final, Protocol

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events as qe
from aioquic.quic.packet import QuicErrorCode

from ..errors import PeerDisconnectedError, ProtocolError
from ..wire.framing import FrameDecoder, encode_message
from .base import Connected, EventQueue, Frame, Received
from .lanes import Lane, LaneGate, LanePlanner, LaneSender, parse_reset_code, reset_code
from .quic_connection import CreditedConnection, ServerConnection

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..stats import DropLog

__all__ = [
    "QUICLink",
    "LinkOwner",
    "EVENT_OVERHEAD",
    "HIGH_WATER",
    "CLOSE_TIMEOUT",
    "CERTIFICATE_REFUSED",
    "TLS_ALERTS",
]

log = logging.getLogger(__name__)

#: QUIC's error codes for TLS alerts: 0x100 plus the alert (RFC 9001 section 4.8).
TLS_ALERTS: Final = QuicErrorCode.CRYPTO_ERROR
#: Unacknowledged bytes above which a connected endpoint's sender waits.
HIGH_WATER: Final = 4 * 1024 * 1024
#: Seconds ``shut()`` waits for the remote to acknowledge what we sent before closing.
CLOSE_TIMEOUT: Final = 2.0
#: Seconds without a datagram from the remote after which ``shut_soon`` closes at once
#: instead of waiting for acknowledgements that will not come.
SILENT_REMOTE: Final = 1.0
#: The application error code of a connection closed for its client certificate.
CERTIFICATE_REFUSED: Final = 0x1001
#: The application error code of a connection closed for breaking our framing or stamps.
PROTOCOL_VIOLATION: Final = 0x1002
#: Call and reply lanes whose streams are remembered, so that a cancellation can reset them.
MAX_MARKED_LANES: Final = 1024
#: Bytes an open stream costs aioquic (its objects), counted with its unacknowledged data.
STREAM_OVERHEAD: Final = 1536
#: Bytes a received message is counted for beyond its frames (its event, its list), so that
#: many small unread messages are bounded too.
EVENT_OVERHEAD: Final = 256


class LinkOwner(Protocol):
    """What a link needs from the endpoint that owns it (``lower.quic``)."""

    events: EventQueue
    dropped: int
    drop_log: DropLog
    max_frame_size: int

    def identify(self, link: QUICLink) -> tuple[bool, str | None]:
        """Whether ``link``'s remote is admitted, and the identity its certificate proves."""

    def link_lost(self, link: QUICLink, reason: str, auth_failed: bool) -> None:
        """``link`` terminated (after it was admitted, or not)."""


class QUICLink(QuicConnectionProtocol):
    """One QUIC connection of an endpoint; see the module doc.

    Args:
        quic: The aioquic connection.
        owner: The endpoint it reports to.
        key: The remote's key in the owner's events.
        waits: Whether senders wait for acknowledgements (a connected endpoint).
        max_unsent_size: A bound endpoint drops the remote past this many unacknowledged
            bytes.
    """

    def __init__(
        self,
        quic: CreditedConnection,
        *,
        owner: LinkOwner,
        key: bytes,
        waits: bool,
        max_unsent_size: int,
        on_connection_id: Callable[[bytes, QUICLink | None], None] | None = None,
    ) -> None:
        super().__init__(quic)
        self._credit = quic.credit
        self._connection = quic
        if on_connection_id is not None:  # a bound endpoint routes datagrams by these ids
            self._connection_id_issued_handler = lambda cid: on_connection_id(cid, self)
            self._connection_id_retired_handler = lambda cid: on_connection_id(cid, None)
        self.key = key
        self._owner = owner
        self._waits = waits
        self._max_unsent_size = max_unsent_size
        self._planner = LanePlanner()
        self._stamps = LaneSender()
        self._gate = LaneGate()
        self._lanes: dict[Lane, int] = {}
        self._decoders: dict[int, FrameDecoder] = {}
        self._partial: dict[int, int] = {}  # stream id -> bytes of its unfinished message
        self._arrived: dict[int, list[int]] = {}  # stream id -> [messages, bytes] it gave
        # call and reply lanes -> (stream id, epoch of its first message, messages on it)
        self._marks: OrderedDict[Lane, tuple[int, int, int]] = OrderedDict()
        self._partial_total = 0
        self._unread: deque[tuple[Received, int]] = deque()  # offered, not yet taken
        self._events = owner.events
        #: Admitted: the handshake is complete and the identity accepted; messages flow.
        self.admitted = False
        self.handshaken = False
        self._ended: str | None = None
        self._drainers: list[asyncio.Future[None]] = []
        self._heard = asyncio.get_running_loop().time()  # the last datagram from the remote
        self._deadline: asyncio.TimerHandle | None = None  # shutting: abort at the latest then
        #: Resolved once the connection has terminated.
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.user_id: str | None = None
        #: Whether we dropped the remote for not taking what we sent (``max_unsent_size``).
        self.slow = False
        #: The QUIC error code the connection terminated with, once it has.
        self.error_code: int | None = None

    @property
    def ended(self) -> str | None:
        """Why the connection ended, once it has (``None`` while it is open)."""
        return self._ended

    def peer_certificate(self) -> tuple[Any, list[Any]]:
        """The remote's certificate and chain, as aioquic parsed them (``None, []``: none)."""
        quic = self._connection
        return quic.peer_certificate() if isinstance(quic, ServerConnection) else (None, [])

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """Note when the remote was last heard of, then let aioquic take the datagram."""
        self._heard = self._loop.time()
        super().datagram_received(data, addr)

    # -- events ---------------------------------------------------------------------------

    def quic_event_received(self, event: qe.QuicEvent) -> None:
        """Act on one aioquic event (see the module doc)."""
        if isinstance(event, qe.StreamDataReceived):
            if self.admitted:
                self._data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, qe.HandshakeCompleted):
            self._handshake_done()
        elif isinstance(event, qe.ConnectionTerminated):
            self._terminated(event)
        elif isinstance(event, qe.StreamReset) and self.admitted:
            self._reset(event.stream_id, event.error_code)

    def _handshake_done(self) -> None:
        self.handshaken = True
        ok, user_id = self._owner.identify(self)
        if not ok:
            self._quic.close(
                error_code=CERTIFICATE_REFUSED, reason_phrase="client certificate refused"
            )
            self.transmit()
            return
        self.admitted = True
        self.user_id = user_id
        self._events.offer(Connected(self.key, user_id=user_id))

    def _data(self, stream_id: int, data: bytes, end: bool) -> None:
        decoder = self._decoders.get(stream_id)
        if decoder is None:
            decoder = self._decoders[stream_id] = FrameDecoder(self._owner.max_frame_size)
        self._credit.delivered += len(data)
        arrived = self._arrived.setdefault(stream_id, [0, 0])
        arrived[1] += len(data)
        try:
            messages = decoder.feed(data) if data else []
            arrived[0] += len(messages)
            self._count_partial(stream_id, 0 if end else decoder.buffered)
            for frames in messages:
                if len(frames) < 2:
                    raise ProtocolError("a message without a stamp and frames")
                for released in self._gate.arrive(frames[0], frames[1:]):
                    self._offer(released)
        except ProtocolError as exc:
            self.violation(str(exc))
            return
        if end:
            del self._decoders[stream_id]
            self._arrived.pop(stream_id, None)
            if decoder.buffered:
                self.violation(f"stream {stream_id} ended {decoder.buffered} bytes into a message")

    def _reset(self, stream_id: int, code: int) -> None:
        """The remote reset a stream (its call was cancelled): what did not arrive is lost.

        Its error code says how many messages it held and of which epoch (``reset_code``),
        so that the barrier after them does not wait for them; its unfinished message is
        dropped; and the bytes aioquic counted for it but never delivered are credit again.
        """
        epoch, count = parse_reset_code(code)
        messages, size = self._arrived.pop(stream_id, [0, 0])
        self._decoders.pop(stream_id, None)
        self._count_partial(stream_id, 0)
        stream = self._quic._streams.get(stream_id)  # noqa: SLF001 - its final size
        if stream is not None:
            self._credit.delivered += max(0, stream.receiver.highest_offset - size)
        if count < messages:
            self.violation(f"stream {stream_id} reset as {count} messages, {messages} came")
            return
        try:
            released = self._gate.lost(epoch, count - messages)
        except ProtocolError as exc:
            self.violation(str(exc))
            return
        for frames in released:
            self._offer(frames)

    def _offer(self, frames: list[Any]) -> None:
        event = Received(self.key, frames)
        size = EVENT_OVERHEAD + sum(map(len, frames))
        self._unread.append((event, size))
        self._credit.unread += size
        self._events.offer(event)

    @property
    def unread(self) -> int:
        """Bytes of messages delivered to the events that the Peer has not taken yet."""
        return self._credit.unread

    def taken(self, event: Received) -> None:
        """The endpoint's ``receive()`` handed ``event`` over: its bytes are credit again."""
        unread = self._unread
        if not unread or unread[0][0] is not event:
            return  # an event of an earlier connection with the same key
        _, size = unread.popleft()
        credit = self._credit
        credit.unread -= size
        if credit.starved() and self._ended is None:
            self.transmit()  # the remote may be waiting for this credit

    def _count_partial(self, stream_id: int, buffered: int) -> None:
        """Track the bytes held for incomplete messages over all streams; bound them.

        Each stream holds at most one incomplete message (its decoder checks each frame
        against ``max_frame_size``); many streams at once may not hold more than
        ``2 * max_frame_size`` together (QUIC's flow control, which aioquic extends as data
        arrives, does not bound what a remote leaves unfinished).

        Raises:
            ProtocolError: Over that bound.
        """
        self._partial_total += buffered - self._partial.pop(stream_id, 0)
        if buffered:
            self._partial[stream_id] = buffered
        limit = 2 * self._owner.max_frame_size
        if self._partial_total > limit:
            raise ProtocolError(f"over {limit} bytes of unfinished messages on its streams")

    def violation(self, why: str) -> None:
        """The remote broke our framing or stamps: count it once and close the connection."""
        if self._ended is not None:
            return
        self._owner.dropped += 1
        self._owner.drop_log.dropped(f"QUIC: {why} (the connection is closed)")
        self._ended = f"protocol violation: {why}"
        self._quic.close(error_code=PROTOCOL_VIOLATION, reason_phrase=why[:200])
        self.transmit()

    def _terminated(self, event: qe.ConnectionTerminated) -> None:
        reason = self._ended or (event.reason_phrase or f"QUIC error {event.error_code:#x}")
        self._ended = reason
        self.error_code = event.error_code
        auth_failed = event.error_code == CERTIFICATE_REFUSED
        self._wake_senders()
        self._owner.link_lost(self, reason, auth_failed)
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def tls_failed(self) -> bool:
        """Whether the connection ended for a TLS alert (a certificate that did not verify)."""
        code = self.error_code
        return code is not None and TLS_ALERTS <= code < TLS_ALERTS + 0x100

    # -- sending --------------------------------------------------------------------------

    def queue(self, frames: Sequence[Frame]) -> bool:
        """Send one message on its lane; return whether the sender must ``drain()`` now.

        Raises:
            PeerDisconnectedError: The connection has ended, or (bound side) the remote
                reads too slowly and was dropped.
        """
        if self._ended is not None or not self.admitted:
            raise PeerDisconnectedError(
                f"the QUIC connection is closed: {self._ended or 'not open'}"
            )
        plan, ended = self._planner.plan(frames)
        quic = self._quic
        self._end_lanes(plan.reset, ended)
        stream_id = self._lanes.get(plan.lane)
        if stream_id is None:
            stream_id = quic.get_next_available_stream_id(is_unidirectional=True)
            if not plan.last:
                self._lanes[plan.lane] = stream_id
        elif plan.last:
            del self._lanes[plan.lane]
        if not plan.barrier and plan.lane[0] in ("call", "reply"):
            self._mark(plan.lane, stream_id)
        stamp = self._stamps.stamp(plan.barrier)
        quic.send_stream_data(stream_id, b"".join(encode_message([stamp, *frames])), plan.last)
        self._transmit_soon()
        unacked = self.unacked()
        if self._waits:
            return unacked > HIGH_WATER
        if unacked > self._max_unsent_size:
            self.slow = True  # its credit, or its acknowledgements, did not come
            self.violation(f"{unacked} bytes unacknowledged, over max_unsent_size")
            raise PeerDisconnectedError("the remote was dropped: too slow a consumer")
        return False

    def _end_lanes(self, reset: Lane | None, ended: list[Lane]) -> None:
        if reset is not None:
            self._reset_lane(reset)
        for lane in ended:
            stream_id = self._lanes.pop(lane, None)
            if stream_id is not None:
                self._quic.send_stream_data(stream_id, b"", end_stream=True)

    def _mark(self, lane: Lane, stream_id: int) -> None:
        """Note one more message on ``lane``'s stream, for ``_reset_lane``."""
        marks, epoch = self._marks, self._stamps.epoch
        sid, first, count = marks.pop(lane, (stream_id, epoch, 0))
        marks[lane] = (stream_id, first, count + 1) if sid == stream_id else (stream_id, epoch, 1)
        if len(marks) > MAX_MARKED_LANES:
            marks.popitem(last=False)

    def _reset_lane(self, lane: Lane) -> None:
        """Reset ``lane``'s stream: its unsent data is dropped, its credit freed.

        Only where every message on it belongs to the current epoch (the receiver can then
        account for the ones that never come; ``reset_code``); else it is just finished.
        """
        open_id = self._lanes.pop(lane, None)
        stream_id, first, count = self._marks.pop(lane, (open_id, -1, 0))
        code = reset_code(first, count) if first == self._stamps.epoch else None
        if stream_id is not None and code is not None:
            self._quic.reset_stream(stream_id, code)
        elif open_id is not None:
            self._quic.send_stream_data(open_id, b"", end_stream=True)

    async def drain(self) -> None:
        """Wait until under a quarter of ``HIGH_WATER`` is unacknowledged."""
        while self._ended is None and self.unacked() > HIGH_WATER // 4:
            waiter = asyncio.get_running_loop().create_future()
            self._drainers.append(waiter)
            await waiter
        if self._ended is not None:
            raise PeerDisconnectedError(f"the QUIC connection ended: {self._ended}")

    def transmit(self) -> None:
        """Send what aioquic has for the network; wake senders once it has taken enough."""
        super().transmit()
        if self._deadline is not None and self._everything_acknowledged():
            self.abort()  # shutting, and the remote has everything: close now
        if self._drainers and self.unacked() <= HIGH_WATER // 4:
            drainers, self._drainers = self._drainers, []
            for waiter in drainers:
                if not waiter.done():
                    waiter.set_result(None)

    def unacked(self) -> int:
        """Bytes we sent (or hold to send) that the remote has not acknowledged yet.

        Each stream counts ``STREAM_OVERHEAD`` too: a remote that withholds its credit
        makes us hold many small replies' streams.
        """
        streams = self._quic._streams.values()  # noqa: SLF001 - aioquic has no public count
        return sum(len(s.sender._buffer) + STREAM_OVERHEAD for s in streams)  # noqa: SLF001

    def _everything_acknowledged(self) -> bool:
        own = int(not self._quic.configuration.is_client)  # the low bit of our stream ids
        return not any(
            sid % 2 == own
            for sid in self._quic._streams  # noqa: SLF001 - acknowledged streams are dropped
        )

    # -- closing --------------------------------------------------------------------------

    def shut_soon(self) -> None:
        """Finish our lanes and close once the remote acknowledged them (or ``CLOSE_TIMEOUT``).

        No task: a timer, and the acknowledgements ``transmit`` sees, end it.
        """
        if self._ended is not None or self._deadline is not None:
            return
        loop = asyncio.get_running_loop()
        if not self.admitted or loop.time() - self._heard > SILENT_REMOTE:
            self.abort()  # nobody there to acknowledge (the Peer's heartbeat gave up on it)
            return
        for stream_id in self._lanes.values():
            self._quic.send_stream_data(stream_id, b"", end_stream=True)
        self._lanes.clear()
        self._deadline = loop.call_later(CLOSE_TIMEOUT, self.abort)
        self.transmit()

    async def shut(self) -> None:
        """Finish our lanes, wait for their acknowledgement, close; see the module doc.

        Cancellation: the connection is closed (without waiting) even when cancelled.
        """
        self.shut_soon()
        try:
            await asyncio.shield(self.closed)
        except asyncio.CancelledError:
            self.abort()
            raise

    def abort(self) -> None:
        """Close the connection now and stop its timer (its socket is the owner's).

        Waiting senders fail and ``closed`` resolves; the owner is not told (it asked).
        """
        deadline, self._deadline = self._deadline, None
        if deadline is not None:
            deadline.cancel()
        if self._ended is None:
            self._ended = "closed"
            self._quic.close(error_code=QuicErrorCode.NO_ERROR, reason_phrase="closed")
            with contextlib.suppress(Exception):  # the socket may be closed already
                self.transmit()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transmit_task is not None:
            self._transmit_task.cancel()
            self._transmit_task = None
        self._wake_senders()
        if not self.closed.done():
            self.closed.set_result(None)

    def _wake_senders(self) -> None:
        drainers, self._drainers = self._drainers, []
        for waiter in drainers:
            if not waiter.done():
                waiter.set_exception(
                    PeerDisconnectedError(f"the QUIC connection ended: {self._ended}")
                )
