"""One stream connection: the asyncio protocol that frames, batches and bounds it.

Theory of operation: a stream transport (TCP, Unix domain sockets: ``lower.stream_transport``)
carries messages framed by ``wire.framing`` over a byte stream. Each connection is one
``StreamProtocol``: its ``data_received`` callback feeds a ``FrameDecoder`` and offers
``Connected``, ``Received`` and finally ``Disconnected`` to its endpoint's bounded
``EventQueue`` directly, with no reader task (a task step per read was a measurable part of a
small call). A full queue pauses reading on every connection that offers to it, and the
stream's flow control pushes back on the senders; reading resumes once the queue has drained
to half. A framing violation (an oversized frame, a bad count) closes that connection only.

Writes: the first message of a loop iteration is written at once; the rest of the
iteration's messages go out together in one ``write`` at its end (one ``writelines`` when
large frames are among them, which are not copied), or, for a batch of small messages
only, as soon as it holds ``FLUSH_SIZE`` bytes: the remote starts on the first replies
while we build the rest, instead of the two sides taking turns (64 echoes in flight: 56k
calls/s against 40k when a whole iteration's batch waited for its end; see
docs/performance.md). A sender waits for ``drain`` only once that batch, or the
transport's write buffer, is past ``WRITE_HIGH_WATER`` (the buffer's high-water mark), and
then until the buffer is under a quarter of it; small messages cost no extra await.

Slow consumers (bound side): one remote that does not read what we send must neither stall
the others nor grow our memory. So on a bound endpoint a sender never waits for one remote;
instead, while a remote's unsent output is over ``WRITE_HIGH_WATER``, we stop reading from
it (it cannot hand us more work, and the stream pushes back on it). A remote is dropped, as
``Disconnected(slow=True)``, when its unsent output passes ``max_unsent_size`` or when it
reads none of it for ``slow_remote_timeout`` seconds (``Limits``). The connected side keeps
the plain backpressure (its senders wait): it has one remote, and it never stops reading for
a backlog, so the two sides cannot wait on each other.

Only ``lower.stream_transport`` makes these protocols; the endpoint that owns one
(``StreamConnection``) is told when it is made (``admit``) and when it is lost (``lost``).
What a connection logs goes to its endpoint's logger, named after the concrete transport
(``callosum_like.lower.tcp``, ``callosum_like.lower.unix``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from ..errors import PeerDisconnectedError, ProtocolError
from ..wire.framing import FrameDecoder, FrameEncoder
from .base import Connected, Frame, Received

if TYPE_CHECKING:
    from .stream_transport import StreamConnection

__all__ = ["StreamProtocol", "Limits", "WRITE_HIGH_WATER", "COPY_LIMIT", "FLUSH_SIZE"]

log = logging.getLogger(__name__)

#: Write-buffer size above which a sender waits for the socket to drain.
WRITE_HIGH_WATER: Final = 4 * 1024 * 1024
#: Frames from this size on are written without a copy; smaller ones are copied into the
#: batch's one buffer, which costs less than one more item for ``writelines``.
COPY_LIMIT: Final = 16 * 1024
#: Bytes of small messages batched that are written at once rather than at the end of the
#: loop iteration (module doc); a batch past ``COPY_LIMIT`` waits for the end as before.
#: Measured with 64-byte echoes, 64 in flight: 1-2 KiB pay most; 4 KiB and more, or every
#: message on its own, pay far less.
FLUSH_SIZE: Final = 2048


@dataclass(frozen=True, slots=True)
class Limits:
    """How a bound endpoint treats remotes that do not read (see the module doc).

    Attributes:
        max_unsent_size: Bytes sent to a remote and not yet read, past which it is dropped.
        slow_remote_timeout: Seconds a remote with a backlog may read none of it.
    """

    max_unsent_size: int
    slow_remote_timeout: float


class StreamProtocol(asyncio.Protocol):
    """One stream connection (TCP or Unix): the protocol that frames it, and its write batch.

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

    def __init__(self, owner: StreamConnection, key: bytes, limits: Limits | None) -> None:
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
        """Become the endpoint's remote; close at once if the endpoint is closed."""
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if not self._owner.admit(self):
            transport.close()

    def data_received(self, data: bytes) -> None:
        """Offer each complete message; a framing error closes this connection only."""
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
        key, offer = self.key, self._events.offer  # ``offer``, inline: the hot path
        for frames in messages:
            if not offer(Received(key, frames)) and not self._queue_full:
                self._pause_for_queue()

    def eof_received(self) -> None:
        """Let the transport close."""
        return None  # the transport closes; ``connection_lost`` reports it

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail waiting senders, and tell the endpoint why the connection ended."""
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
                why = f"the {self._owner.kind} connection ended: {lost}"
                waiter.set_exception(PeerDisconnectedError(why))
        self._owner.lost(self, self._lost)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        """Past the high-water mark: senders wait, or a bound endpoint stops reading it."""
        self._write_paused = True
        if self.limits is not None and self._transport is not None:
            self._backlog = True  # it cannot hand us more work while it does not read ours
            self._set_reading()
            self._arm_watchdog(self._transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        """Under the low-water mark: wake senders, and read from the remote again."""
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
            self._pause_for_queue()

    def _pause_for_queue(self) -> None:
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
            raise PeerDisconnectedError(f"the {self._owner.kind} connection is closed")
        queued = self._batch.add(frames)
        if not self._holding:  # the first message of this loop iteration leaves at once
            self._holding = True
            self._loop.call_soon(self._release)
            self._flush()
            queued = 0
        if queued <= WRITE_HIGH_WATER and not self._write_paused:
            if FLUSH_SIZE <= queued < COPY_LIMIT:
                self._flush()
            return False
        self._flush()
        if self.limits is not None:
            self._check_unsent(self.limits.max_unsent_size)
            return False  # a bound endpoint never waits for one remote: its reading pauses
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the socket's write buffer is back under its low-water mark."""
        if self._lost is not None:
            raise PeerDisconnectedError(f"the {self._owner.kind} connection ended: {self._lost}")
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

    def peer_certificate(self) -> bytes | None:
        """The remote's verified TLS certificate (DER), if it presented one."""
        if self._transport is None:
            return None
        ssl_object = self._transport.get_extra_info("ssl_object")
        return None if ssl_object is None else ssl_object.getpeercert(binary_form=True)

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
            self._owner.log.warning("dropping a %s remote: %s", self._owner.kind, self.slow)
        self.abort()
