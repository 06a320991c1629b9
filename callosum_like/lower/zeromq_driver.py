"""The ZeroMQ socket driver: moves messages between a non-async socket and the event loop.

Theory of operation (``lower.zeromq`` holds the connections and the transport that own one
driver per socket):

* No future per message. pyzmq's asyncio sockets create and resolve a future for every send
  and receive, which profiles showed to be most of the per-call cost. Instead a
  ``SocketDriver`` owns a plain (non-async) socket of the shared context and watches its
  ``zmq.FD`` with ``loop.add_reader``. That descriptor is *edge*-triggered and only means
  "look at ``zmq.EVENTS``"; so after every send or receive the driver re-checks the events
  (one ``call_soon`` per loop iteration, however many operations) or it could miss work.
* Receiving: the driver drains up to ``RECV_BATCH`` messages per wakeup and hands each to its
  owner's callback; when the callback says its queue is full, the driver stops reading until
  told to ``resume_reading``, and ZeroMQ's high-water marks push back on the remote.
* Sending: the first message of a loop iteration goes to the socket at once when it can
  (``NOBLOCK``), so a lone message waits for nothing. The small messages sent after it in the
  same iteration are *batched*: packed back to back into one ZeroMQ frame that leaves at the
  end of the iteration, or as soon as it holds ``PIPELINE_BATCH`` messages (one libzmq send
  and one wake-up of its I/O thread for all of them, instead of one per frame). A message
  over ``SMALL_MESSAGE_SIZE`` always goes as its own ZeroMQ message, its large frames
  without a copy. What the socket cannot take yet waits in the driver's queue and leaves on
  the next ``POLLOUT``; a sender waits only when that queue holds ``SEND_QUEUE_SIZE``
  ZeroMQ messages. On a ROUTER, a remote whose pipe refuses more (``EAGAIN``) is reported to
  ``on_blocked`` and what waits for it is dropped; the others go on.
* Batch layout (docs/PROTOCOL.md): a ZeroMQ message whose first frame (after the routing id)
  is empty is an envelope. ``[b"", batch]`` is a batch: messages in the stream framing of
  ``wire.framing``, packed by ``pack_batch``. ``[b"", b"", *frames]`` is one message whose own
  first frame is empty, or whose last frame is large: the receiving driver takes the frames
  after that escape without a copy. Unpacking envelopes, and dropping what does not split,
  is the connection's part (``lower.zeromq``).
* Closing: what waits in the driver's queue goes to the socket if it takes it, and libzmq
  keeps sending what the socket holds for ``CLOSE_LINGER_MS`` more, in the background.

Layering: used by ``lower.zeromq`` only; it imports ``errors``, ``wire.framing``,
``lower.base`` (for ``Frame``) and ``zmq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import zmq

from ..errors import PeerClosedError
from ..wire.framing import MAX_FRAMES, framed_size, pack_batch
from .base import Frame

__all__ = [
    # limits
    "RECV_BATCH",
    "SEND_QUEUE_SIZE",
    "CLOSE_LINGER_MS",
    "ZERO_COPY_THRESHOLD",
    "BATCH_SIZE",
    "PIPELINE_BATCH",
    "SMALL_MESSAGE_SIZE",
    "BATCH_MARK",
    # the driver
    "SocketDriver",
    "frame_contents",
]

log = logging.getLogger(__name__)

#: Messages taken from a socket per wakeup before yielding to the loop (fairness).
RECV_BATCH: Final = 256
#: ZeroMQ messages a driver holds for a socket that cannot take them yet, before senders wait.
SEND_QUEUE_SIZE: Final = 1024
#: Milliseconds libzmq keeps sending, after a socket is closed, what it had taken before: a
#: closing Peer's last words (its Cancelled replies, its Goodbye) reach a remote that reads,
#: without anything of ours waiting for them. Bounded, for a remote that does not read.
CLOSE_LINGER_MS: Final = 1_000
#: Frames from this size on are handed to ZeroMQ without a copy. Measured on loopback
#: (docs/performance.md): below 64 KiB a copy costs less than the zmq.Frame and the release
#: notification that zero-copy needs; from 128 KiB zero-copy moves 1.5-2x the bytes per CPU
#: second.
ZERO_COPY_THRESHOLD: Final = 64 * 1024
#: Bytes a batch holds at most before it is closed and queued. Receivers accept ZeroMQ frames
#: of this size whatever their ``max_frame_size`` (which they check per message instead).
#: 16 KiB holds a loop iteration's worth of small calls (64 calls of 64 bytes take 4 KiB)
#: while keeping what ``HIGH_WATER_MARK`` (``lower.zeromq``) unread batches can hold bounded.
BATCH_SIZE: Final = 16 * 1024
#: A batch leaves as soon as it holds this many messages, without waiting for the end of the
#: loop iteration: the remote starts on them while this side produces the rest, so both
#: processes work at once instead of in turns. W2 (64 calls in flight), in calls/s: 15-18k
#: with whole-iteration batches, 26-35k with batches of 8, 16 or 32.
PIPELINE_BATCH: Final = 16
#: Messages of at most this many bytes (framed) are batched; larger ones go on their own.
SMALL_MESSAGE_SIZE: Final = BATCH_SIZE
#: The first frame of an envelope (a batch, or an escaped message).
BATCH_MARK: Final = b""
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)
_EVENTS: Final = int(zmq.EVENTS)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_MORE: Final = int(zmq.SNDMORE) | _NOBLOCK
#: What framing adds to a message of two frames (its count and two lengths).
_TWO_FRAMES: Final = framed_size((b"", b""))


def _copy(frames: Sequence[Frame]) -> bool:
    # The body, when there is one, is the last and the largest frame.
    return len(frames[-1]) < ZERO_COPY_THRESHOLD


def frame_contents(frame: zmq.Frame) -> Frame:
    """A small frame as ``bytes``; a large one as a view of ZeroMQ's own buffer (no copy)."""
    return frame.buffer if len(frame) >= ZERO_COPY_THRESHOLD else frame.bytes


class _Batch:
    """The small messages for one route since the last message left at once."""

    __slots__ = ("messages", "size")

    def __init__(self) -> None:
        self.messages: list[Sequence[Frame]] = []
        self.size = 0

    def message(self, route: bytes | None) -> list[Frame]:
        """The ZeroMQ message that carries them: a batch, or the one message as it is."""
        if len(self.messages) == 1:
            return _plain(route, self.messages[0])
        prefix: list[Frame] = [BATCH_MARK] if route is None else [route, BATCH_MARK]
        return [*prefix, pack_batch(self.messages)]


def _plain(route: bytes | None, frames: Sequence[Frame]) -> list[Frame]:
    """One message as its own ZeroMQ message.

    It is escaped when its first frame is empty, or when its last frame is large: the
    receiver then takes its frames without a copy (see the batch layout above).
    """
    prefix: list[Frame] = [] if route is None else [route]
    if not frames[0] or len(frames[-1]) >= ZERO_COPY_THRESHOLD:
        prefix += [BATCH_MARK, BATCH_MARK]
    return [*prefix, *frames]


class SocketDriver:
    """Moves messages between one non-async ZeroMQ socket and the event loop.

    Args:
        sock: The socket; the driver closes it.
        on_message: Called with each received message; returns False to pause reading.
        copy: Receive frames as ``bytes`` (True; the frames of an escaped message as
            buffers, without a copy) or as ``zmq.Frame`` (False).
        routed: The socket is a ROUTER: a routing id precedes each message.
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        on_message: Callable[[list[Any]], bool],
        *,
        copy: bool = True,
        routed: bool = False,
        on_blocked: Callable[[bytes], None] | None = None,
    ) -> None:
        self._sock = sock
        self._on_blocked = on_blocked
        # Below pyzmq's sugar (which adds routing_id and group, and converts flag enums).
        self._send: Callable[[zmq.Socket[Any], Frame, int, bool], object]
        self._send = zmq.backend.Socket.send  # type: ignore[assignment]
        self._get: Callable[[int], int] = sock.get  # type: ignore[assignment]
        self._escape_at = 1 if routed else 0
        self._fd = sock.FD
        self._on_message = on_message
        self._copy = copy
        self._loop = asyncio.get_running_loop()
        self._outbox: deque[list[Frame]] = deque()  # ZeroMQ messages, in sending order
        self._batches: dict[bytes | None, _Batch] = {}  # open batches, by route
        self._holding = False  # a message left at once this iteration: batch what follows
        self._space: asyncio.Future[None] | None = None
        self._reading = True
        self._scheduled = False
        self._closed = False
        self._loop.add_reader(self._fd, self._on_ready)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._on_ready)

    def _on_ready(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        self._holding = False
        if self._batches:
            for route in list(self._batches):
                self._seal(route)
        events = self._get(_EVENTS)
        if events & _POLLOUT and self._outbox:
            self._flush()
        if events & _POLLIN and self._reading:
            self._drain()

    def _drain(self) -> None:
        recv = self._recv if self._copy else self._recv_frames
        for _ in range(RECV_BATCH):
            try:
                parts = recv()
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.debug("receive failed: %s", exc)
                return
            if not self._on_message(parts):
                self._reading = False
                return
            if not self._get(_EVENTS) & _POLLIN:  # cheaper than the zmq.Again of one more recv
                return
        self._schedule()  # more may be waiting: come back after others had their turn

    def _recv(self) -> list[Frame]:
        """One ZeroMQ message; after an escape (two empty frames) the rest without a copy.

        Frames are received as ``zmq.Frame`` and copied out with ``bytes``: a frame says
        itself whether more follow, where ``get(RCVMORE)`` is a ``getsockopt`` (0.8 us a
        frame). 1.9 -> 1.1 us for a message of two small frames.

        Raises:
            zmq.Again: Nothing to receive.
        """
        recv = self._sock.recv
        frame = recv(_NOBLOCK, copy=False)
        parts: list[Frame] = [frame.bytes]
        escaped, copy = self._escape_at + 2, True
        while frame.more:
            if copy and len(parts) == escaped and not parts[-1] and not parts[-2]:
                copy = False
            frame = recv(0, copy=False)
            parts.append(frame.bytes if copy else frame_contents(frame))
        return parts

    def _recv_frames(self) -> list[Any]:
        """One ZeroMQ message as ``zmq.Frame`` objects (for their properties)."""
        return self._sock.recv_multipart(zmq.NOBLOCK, copy=False)

    def read_now(self) -> None:
        """Hand over what the socket holds now, without waiting for the loop to wake us.

        For an owner about to report something that must follow what already arrived (a
        lost connection follows its last messages). Stops where reading is paused.
        """
        for _ in range(64):  # bounded: the owner's full queue pauses reading long before
            if self._closed or not self._reading or not self._get(_EVENTS) & _POLLIN:
                return
            self._drain()

    def recheck(self) -> None:
        """Look at the socket again soon: call it after using the socket directly.

        A ``connect``, ``disconnect`` or ``setsockopt`` makes libzmq process the socket's
        commands, which may take the edge of its ``FD`` that would have woken us for a
        message that arrived meanwhile.
        """
        self._schedule()

    def resume_reading(self) -> None:
        """The consumer made room: read again."""
        self._reading = True
        self._schedule()

    def _flush(self) -> None:
        outbox = self._outbox
        while outbox:
            try:
                self._send_parts(outbox[0])
            except zmq.Again:
                if self._on_blocked is None:
                    break  # one pipe: wait until it takes more
                # A ROUTER refuses only for the one remote whose pipe is full: drop that
                # remote and what waits for it, and go on with the others.
                route = bytes(outbox[0][0])
                self._batches.pop(route, None)
                self._outbox = outbox = deque(q for q in outbox if bytes(q[0]) != route)
                self._on_blocked(route)
                continue
            except zmq.ZMQError as exc:
                # A remote that has just left (a ROUTER's EHOSTUNREACH) is routine with many
                # agents coming and going: a Pong or a late reply for it goes nowhere.
                level = logging.DEBUG if exc.errno == zmq.EHOSTUNREACH else logging.WARNING
                log.log(level, "dropped a queued message: %s", exc)
            outbox.popleft()
        if self._space is not None and len(outbox) < SEND_QUEUE_SIZE // 2:
            if not self._space.done():
                self._space.set_result(None)
            self._space = None
        self._schedule()

    def discard_queued(self) -> None:
        """Forget the messages waiting for the socket (they were for a connection now gone)."""
        self._outbox.clear()
        self._batches.clear()
        if self._space is not None and not self._space.done():
            self._space.set_result(None)
        self._space = None

    def send_nowait(self, frames: Sequence[Frame], route: bytes | None = None) -> bool:
        """Send now if nothing is queued and the socket can take it, else batch or queue it.

        The first message of a loop iteration leaves at once; the small ones that follow in
        the same iteration wait for its end and leave together, packed into one batch.

        Args:
            frames: The message.
            route: The routing id to prefix (ROUTER), or ``None``.

        Returns:
            Whether the queue holds ``SEND_QUEUE_SIZE`` ZeroMQ messages: then the sender
            must ``await wait_room()``.

        Raises:
            zmq.ZMQError: The socket refused the message (e.g. ``EHOSTUNREACH``).
            PeerClosedError: The driver was closed.
        """
        if self._closed:
            raise PeerClosedError("connection closed")
        if not (self._holding or self._outbox or self._batches):
            try:
                self._send_parts(_plain(route, frames))
            except zmq.Again:
                pass
            else:
                self._holding = True
                self._schedule()  # ends the batching, and the send may have eaten the FD's edge
                return False
        self._enqueue(frames, route)
        if not self._scheduled:
            self._schedule()
        return len(self._outbox) >= SEND_QUEUE_SIZE

    async def wait_room(self) -> None:
        """Wait until the queue is below half of ``SEND_QUEUE_SIZE`` (or the driver closed)."""
        while len(self._outbox) >= SEND_QUEUE_SIZE and not self._closed:
            if self._space is None:
                self._space = self._loop.create_future()
            await asyncio.shield(self._space)

    def _send_parts(self, parts: Sequence[Frame]) -> None:
        """Send one ZeroMQ message without blocking (all of it, or ``zmq.Again``).

        pyzmq's ``send_multipart`` costs 2.4 us for two small frames, mostly flag enums and
        checks; this loop over the backend's ``send`` with int flags costs 0.6 us.
        """
        send, sock, copy = self._send, self._sock, _copy(parts)
        for part in parts[:-1]:
            send(sock, part, _MORE, copy)
        send(sock, parts[-1], _NOBLOCK, copy)

    def _enqueue(self, frames: Sequence[Frame], route: bytes | None) -> None:
        batch = self._batches.get(route)
        if len(frames) == 2:  # a header and a body: ``framed_size``, inline
            size = _TWO_FRAMES + len(frames[0]) + len(frames[1])
        else:
            size = framed_size(frames)
        if size > SMALL_MESSAGE_SIZE or len(frames) > MAX_FRAMES:
            if batch is not None:
                self._seal(route)
            self._outbox.append(_plain(route, frames))
            return
        if batch is not None and batch.size + size > BATCH_SIZE:
            self._seal(route)
            batch = None
        if batch is None:
            batch = self._batches[route] = _Batch()
        batch.messages.append(frames)
        batch.size += size
        if len(batch.messages) >= PIPELINE_BATCH:
            self._seal(route)
            self._flush()  # now, not at the end of the iteration: the remote can start on it

    def _seal(self, route: bytes | None) -> None:
        self._outbox.append(self._batches.pop(route).message(route))

    def close(self) -> None:
        """Stop watching the socket and close it, letting what was sent before leave.

        What waits in our queue goes to the socket if it takes it, and libzmq's I/O thread
        keeps sending what the socket holds for ``CLOSE_LINGER_MS`` more (in the background:
        the shared context is never terminated, so nothing waits for it here). The rest,
        for a remote that does not read, is discarded.
        """
        if self._closed:
            return
        for route in list(self._batches):
            self._seal(route)
        for parts in self._outbox:  # once each: a remote whose pipe is full gets no more
            with contextlib.suppress(zmq.ZMQError):
                self._send_parts(parts)
        self._outbox.clear()
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._space is not None and not self._space.done():
            self._space.set_result(None)
        self._sock.close(linger=CLOSE_LINGER_MS)
