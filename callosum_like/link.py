"""One remote as a Peer sees it: its session, what is pending on it, and its send path.

Theory of operation: the Peer keeps one ``Link`` per transport key. A link owns

* its sans-IO ``Session`` (link and call states, liveness) and the reassembly of the chunked
  bodies it receives;
* what this side waits for on it: the futures of our calls (``pending``), the inboxes of our
  streams (``streams``), the credit windows of our streamed bodies (``uploads``), and the
  outgoing chunked transfers; ``fail`` ends all of them with one error when the link ends;
* its send path: ``send`` encodes a message and hands its frames to the connection, or, for a
  body over ``chunk_size``, sends a head and chunks a window ahead of the receiver. Chunks are
  ``BULK_CHUNKS`` times larger while the remote sends nothing but the transfers' own messages
  (no one waits behind them). A call whose order key has a chunked call being sent waits for
  it, so that the remote sees calls in the order they were made.

Collaborators are passed in (the connection, the counters, a clock, a ``spawn`` for
background sends); a link never reaches back into the Peer. The relay sends on links through
``send`` and ``send_quietly``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Final, cast

from .errors import MessageTooLargeError, PeerClosedError, PeerDisconnectedError
from .lower.base import Connection
from .replay import Replay, UnackedOverflow
from .session import CallInput, LinkState, Session
from .stats import Counters
from .streams import CreditWindow, StreamInbox
from .transfers import OutgoingTransfers, Reassembly, TransferStopped
from .wire import messages as m
from .wire.codec import Frame, encode, encode_head

__all__ = ["Link", "SHARED_SPAN", "BULK_CHUNKS", "TRANSFER_KINDS"]

log = logging.getLogger(__name__)

#: Seconds within which two messages from the remote (other than chunks and their acks)
#: make a link count as shared, and for which it then stays shared: chunks are small.
SHARED_SPAN: Final = 0.1
#: How many times ``chunk_size`` a chunk is while its link is not shared.
BULK_CHUNKS: Final = 4
#: The message kinds that carry a body, and so may travel in chunks.
_BODY_KINDS: Final = m.kinds_with(m.Trait.BODY)
#: The messages of chunked transfers themselves: they do not make a link count as shared.
TRANSFER_KINDS: Final = m.kinds_with(m.Trait.TRANSFER)
#: What a resumable link does not number: the handshake and messages about the link itself.
UNSEQUENCED_KINDS: Final = m.kinds_with(m.Trait.HANDSHAKE) | m.kinds_with(m.Trait.LINK)
#: The states in which a handler's reply is sent (a suspended link keeps it for resumption).
_REPLYING: Final = frozenset({LinkState.OPEN, LinkState.SUSPENDED})

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Link:
    """One remote peer as this peer sees it.

    Args:
        key: The remote's key on the transport connection.
        session: Its sans-IO state.
        connection: The transport connection the remote is on.
        counters: Where bytes sent and failed calls are counted.
        max_body_size: The largest body we send or accept.
        chunk_size: Bodies over this many bytes travel in chunks.
        compress: Snappy-compress large bodies we send.
        clock: The event loop's clock.
        spawn: Runs a coroutine in the background, owned by the Peer.
        user_id: The identity the transport proved (CURVE), if any.
    """

    def __init__(
        self,
        key: bytes,
        session: Session,
        *,
        connection: Connection,
        counters: Counters,
        max_body_size: int,
        chunk_size: int,
        compress: bool,
        clock: Callable[[], float],
        spawn: Spawn,
        user_id: str | None = None,
        serial: int = 0,
    ) -> None:
        self.key = key
        #: A number unique among its Peer's links (``PeerEvent.link``).
        self.serial = serial
        #: The connecting Peer's reconnect token, from its Hello (bound side).
        self.token: str | None = None
        #: A resumable link's sequencing (``replay``); ``None`` for a plain link.
        self.replay: Replay | None = None
        #: False once the session can no longer be resumed (what it keeps overflowed).
        self.resumable = True
        #: When it was suspended, on the loop's clock.
        self.suspended_at = 0.0
        #: The new session a connecting side asked for in this link's Hello.
        self.asked_session: str | None = None
        self.session = session
        self.user_id = user_id
        self.incoming = Reassembly(max_body_size)
        self.pending: dict[int, asyncio.Future[m.Message]] = {}
        self.streams: dict[int, StreamInbox] = {}
        self.uploads: dict[int, CreditWindow] = {}  # our streamed bodies
        self.outgoing = OutgoingTransfers()
        #: Order keys of calls whose chunked body is being sent, and when that is done.
        self.bulk_keys: dict[str, asyncio.Future[None]] = {}
        #: When the remote's last two messages other than chunks and their acks came within
        #: ``SHARED_SPAN`` of each other, chunks stay small until ``SHARED_SPAN`` after it.
        self.last_other = -SHARED_SPAN
        self.shared_until = 0.0
        self._connection = connection
        self._counters = counters
        self._max_body_size = max_body_size
        self._chunk_size = chunk_size
        self._compress = compress
        self._clock = clock
        self._spawn = spawn

    def __repr__(self) -> str:
        return f"<Link {self.identity or self.key!r} {self.session.state.value}>"

    @property
    def identity(self) -> str:
        """The remote's identity once the handshake is done."""
        return self.session.remote_identity

    def saw_other(self, now: float) -> None:
        """A message arrived that is not part of a chunked transfer."""
        if now - self.last_other < SHARED_SPAN:
            self.shared_until = now + SHARED_SPAN
        self.last_other = now

    def body_limit(self) -> int:
        """The largest body both sides accept."""
        return min(self._max_body_size, self.session.remote_max_body_size)

    def chunks(self, msg: m.Message) -> bool:
        """Whether ``send`` would send ``msg`` in chunks (waiting for the remote's credit)."""
        return type(msg) in _BODY_KINDS and len(msg.body) > self._chunk_size  # type: ignore[union-attr]

    def check_size(self, size: int) -> None:
        """Raise ``MessageTooLargeError`` for a body of ``size`` bytes over ``body_limit``."""
        limit = self.body_limit()
        if size > limit:
            raise MessageTooLargeError(f"body of {size} bytes exceeds max_body_size {limit}")

    # -- sending ----------------------------------------------------------------------------------

    async def send(self, msg: m.Message) -> None:
        """Send ``msg`` to this remote, in chunks when its body is over ``chunk_size``.

        Raises:
            PeerDisconnectedError: The remote is gone.
            PeerClosedError: Our connection is closed.

        Cancellation: a message is sent whole or not at all; a chunked body cancelled
        half-way is aborted (``ChunkAbort``).
        """
        kind = type(msg)
        if kind in _BODY_KINDS:
            if len(msg.body) > self._chunk_size:  # type: ignore[union-attr]
                await self._send_chunked(msg)
                return
            if self.bulk_keys and kind is m.Call:
                await self._after_bulk(msg.order_key)  # type: ignore[union-attr]
        frames = encode(msg, compress=self._compress)  # _send_frames, inline: the hot path
        if self.replay is not None and kind not in UNSEQUENCED_KINDS:
            await self._send_sequenced(frames)
            return
        self._counters.bytes_out += sum(map(len, frames))
        await self._connection.send(frames, to=self.key)

    def post(self, msg: m.Message) -> Awaitable[None] | None:
        """``send``, without a coroutine for a message that goes whole and at once.

        The hot path of calls and replies: a message that is not chunked, on a link that
        neither numbers its messages (``replay``) nor sends a chunked call (whose order key
        a call might have to wait for), is encoded and queued on the connection here, and
        ``None`` returned; for anything else, or when the connection must wait, what is
        left of the send is returned, for the caller to await before it sends anything else.

        Raises:
            The errors of ``send``, either at once or from the returned awaitable.
        """
        if (
            self.replay is not None
            or self.bulk_keys
            or (type(msg) in _BODY_KINDS and len(msg.body) > self._chunk_size)  # type: ignore[union-attr]
        ):
            return self.send(msg)
        frames = encode(msg, compress=self._compress)
        self._counters.bytes_out += sum(map(len, frames))
        return self._connection.post(frames, to=self.key)

    async def send_quietly(self, msg: m.Message) -> None:
        """``send``, for messages whose loss with the link is expected (pings, cancels)."""
        with contextlib.suppress(PeerDisconnectedError, PeerClosedError):
            await self.send(msg)

    async def send_reply(self, reply: m.Message) -> None:
        """Send a handler's reply while the link is open; an oversize result is an error.

        The caller refuses a body over its ``max_body_size``, and its transport drops the
        whole link for a frame over it: answering the error instead costs only the call.
        """
        sending = self.post_reply(reply)
        if sending is not None:
            await sending

    def post_reply(self, reply: m.Message) -> Awaitable[None] | None:
        """``send_reply``, without a coroutine when the reply goes at once (``post``).

        Returns:
            ``None`` once the reply is queued (or dropped: the link is not open, or gone);
            else what is left of its send, to await before anything else is sent.
        """
        if self.session.state not in _REPLYING:
            return None
        if type(reply) is m.Result:
            size = len(reply.body)
            if size > self._max_body_size or size > self.session.remote_max_body_size:
                reply = self._too_large(reply)
        try:
            sending = self.post(reply)
        except (PeerDisconnectedError, PeerClosedError):
            return None
        except TypeError:  # cannot happen for our own messages; keep the invariant visible
            log.exception("could not encode %r", reply)
            return None
        return None if sending is None else _quietly(sending, reply)

    def _too_large(self, result: m.Result) -> m.Message:
        """The error that answers the call of ``result``, whose body is over the limit."""
        limit = self.body_limit()
        text = f"result of {len(result.body)} bytes exceeds max_body_size {limit}"
        return m.Error(id=result.id, code=MessageTooLargeError.code, message=text)

    def send_in_background(self, msg: m.Message) -> None:
        """Send ``msg`` quietly from a task of the Peer's, without waiting for it."""
        self._spawn(self.send_quietly(msg))

    def abandon(self, call_id: int) -> None:
        """Our caller gave up on ``call_id``: tell the remote to stop it (in the background)."""
        if self.session.call_input(call_id, CallInput.ABANDON) is not None:
            self.send_in_background(m.Cancel(id=call_id))

    async def _send_frames(self, frames: list[Frame]) -> None:
        if self.replay is not None:  # chunks and chunked heads are numbered
            await self._send_sequenced(frames)
            return
        self._counters.bytes_out += sum(map(len, frames))
        await self._connection.send(frames, to=self.key)

    async def _send_sequenced(self, frames: list[Frame]) -> None:
        """Number and keep a message of a resumable link; send it unless it is suspended.

        A connection that turns out to be gone loses nothing: the message goes again when
        the session is resumed.

        Raises:
            PeerDisconnectedError: What is kept passed ``max_unacked_bytes``: the session
                cannot be resumed any more (the Peer ends it).
            PeerClosedError: Our connection is closed.
        """
        assert self.replay is not None
        try:
            frames = self.replay.stamp(frames)
        except UnackedOverflow as exc:
            self.resumable = False
            raise PeerDisconnectedError(f"{self.identity or 'remote'}: {exc}") from None
        if self.session.state is LinkState.SUSPENDED:
            return
        self._counters.bytes_out += sum(map(len, frames))
        with contextlib.suppress(PeerDisconnectedError):
            await self._connection.send(frames, to=self.key)

    async def send_encoded(self, frames: list[Frame]) -> None:
        """Send a message about the link itself (never numbered), encoded already."""
        self._counters.bytes_out += sum(map(len, frames))
        with contextlib.suppress(PeerDisconnectedError, PeerClosedError):
            await self._connection.send(frames, to=self.key)

    async def resend(self, messages: list[list[Frame]]) -> None:
        """After a resumption: send again what the remote lacks (enveloped already)."""
        for frames in messages:
            self._counters.bytes_out += sum(map(len, frames))
            await self._connection.send(frames, to=self.key)

    async def _after_bulk(self, order_key: str | None) -> None:
        """Wait until no chunked call with ``order_key`` is being sent."""
        while order_key is not None and (pending := self.bulk_keys.get(order_key)) is not None:
            await asyncio.shield(pending)

    async def _send_chunked(self, msg: m.Message) -> None:
        """Send ``msg`` as a head and chunks, a window of chunks ahead of the receiver."""
        order_key = msg.order_key if type(msg) is m.Call else None
        done: asyncio.Future[None] | None = None
        if order_key is not None:
            await self._after_bulk(order_key)
            done = self.bulk_keys[order_key] = asyncio.get_running_loop().create_future()
        transfer = await self.outgoing.open()
        finished = False
        try:
            await self._send_frames(encode_head(msg, transfer))
            for part in _slices(msg.body, self._next_chunk_size):  # type: ignore[union-attr]
                await self.outgoing.take(transfer)
                chunk = m.Chunk(transfer=transfer, body=cast(bytes, part))
                await self._send_frames(encode(chunk, compress=self._compress))
            finished = True
        except TransferStopped:
            log.info("the remote refused the body of %s", type(msg).__name__)
        finally:
            self.outgoing.close(transfer)
            if not finished and self.session.is_open:
                self.send_in_background(m.ChunkAbort(transfer=transfer))
            if done is not None:
                del self.bulk_keys[order_key]  # type: ignore[arg-type]
                done.set_result(None)

    def _next_chunk_size(self) -> int:
        """The size of the next chunk: ``chunk_size``, or more while the link is quiet.

        Small chunks are for the small messages that would otherwise wait behind a large
        body. While the remote sends nothing else (two messages within ``SHARED_SPAN`` of
        each other mark the link as shared), no one waits, and chunks are ``BULK_CHUNKS``
        times larger: over ZeroMQ each chunk costs about 0.1 ms of CPU on either side beyond
        its bytes (docs/performance.md). A small message that comes when the link was quiet
        waits behind at most a window of large chunks; the chunks after it are small.
        """
        if self._clock() < self.shared_until:
            return self._chunk_size
        return self._chunk_size * BULK_CHUNKS

    # -- ending -----------------------------------------------------------------------------------

    def fail(self, error: Exception) -> None:
        """The link ended (or we close): fail everything waiting on it with ``error``."""
        for inbox in self.streams.values():
            inbox.fail(error)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(error)
                self._counters.count_error(type(error).__name__)
        self.outgoing.fail(error)


async def _quietly(sending: Awaitable[None], reply: m.Message) -> None:
    """Finish the send of ``reply``; its loss with the link is expected (``post_reply``)."""
    with contextlib.suppress(PeerDisconnectedError, PeerClosedError):
        try:
            await sending
        except TypeError:  # cannot happen for our own messages; keep the invariant visible
            log.exception("could not encode %r", reply)


def _slices(body: m.PackedBody, size: Callable[[], int]) -> Iterator[bytes | memoryview]:
    """``body`` cut into chunks of ``size()`` bytes each, as views where it can (no copy)."""
    large = body if type(body) is m.LargeBody else m.LargeBody((cast(bytes, body),))
    return large.slices(size)
