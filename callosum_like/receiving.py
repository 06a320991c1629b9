"""What a Peer does with each event its transport reports: one handler per message kind.

Theory of operation: the Peer's receive loop hands every transport event to ``Receiver``:
``received`` for a message (the common case), ``other`` for a remote connecting, going away,
or failing authentication. A message is decoded, checked against its link's state
(``Session.receive``, which also counts it as a sign of life), and dispatched through
``HANDLERS``, a table with one handler per message class:

* calls go to the dispatcher (or the relay's forwarder, for a call with a ``target`` or one
  this peer does not serve); cancels and credit likewise;
* replies resolve the caller's future (or feed its stream's inbox) with the reply *message*;
  a reply for a call no local caller made goes to the forwarder;
* the handshake, goodbyes and names announced by relays go to the remotes' registry;
* chunks are reassembled per link, acknowledged, and the whole message dispatched again.

A handler may raise ``ProtocolError``: the loop drops that message (logged, counted) and
goes on.

The messages of the hot path do not even wait for the loop: ``take``, which the Peer gives
its connection (``Connection.take_directly``), handles a call, a reply, a chunk, credit or a
ping from the transport's callback while the loop is idle, in the loop's context, and leaves
the loop only what had to wait (a reply held up by a full socket, a body joined off the
loop, ...). A small call's message so costs no task step of the loop's, and each side of a
call one loop iteration less. ``take`` declines every other kind (they go through the loop
as before): a ``Cancel`` stops a job and a link's own messages may end a link, which wait
under ``asyncio.timeout`` and so need a task; so does a relay's forwarding, and a resumable
link's envelope. Only ``peer`` uses this module.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .dispatch import Dispatcher
from .errors import (
    AuthenticationError,
    ErrorCode,
    MessageTooLargeError,
    PeerClosedError,
    ProtocolError,
)
from .link import TRANSFER_KINDS, UNSEQUENCED_KINDS, Link
from .lower.base import (
    AuthFailed,
    Connected,
    Disconnected,
    Frame,
    Received,
    Started,
    TransportEvent,
)
from .remotes import Remotes
from .replay import has_envelope
from .routing import scoped
from .session import CallInput, LinkInput, LinkState
from .stats import Counters
from .wire import messages as m
from .wire.codec import ChunkedHead, OversizeBodyError, decode, encode

__all__ = ["Receiver"]

#: A Ping as it arrives, and the Pong that answers it, encoded once.
_PING_MESSAGE: Final = m.Ping()
_PING: Final = encode(_PING_MESSAGE)
_PONG: Final = encode(m.Pong())
#: The wire codes of the messages about a link itself that are not part of its handshake.
_LINK_CODES: Final = frozenset(int(cls.KIND) for cls in m.kinds_with(m.Trait.LINK)) - {
    int(m.MessageKind.GOODBYE)
}
#: The wire codes of the messages ``take`` handles from the transport's callback: those whose
#: handling never needs a task of its own (see the module doc).
_TAKEN_CODES: Final = frozenset(
    int(cls.KIND)
    for cls in (
        *m.kinds_with(m.Trait.REPLY),
        m.Call,
        m.Credit,
        m.StreamItem,
        m.Chunk,
        m.ChunkAck,
        m.Ping,
        m.Pong,
        m.UploadItem,
        m.UploadEnd,
        m.UploadCredit,
    )
)
#: The wire codes of what a resumable link does not number.
_UNSEQUENCED_CODES: Final = frozenset(int(cls.KIND) for cls in UNSEQUENCED_KINDS)


def _left_over(frames: list[Frame]) -> bool:
    """Whether ``frames`` are what a reconnecting remote queued for its last connection."""
    return has_envelope(frames) or _kind_of(frames) in _LINK_CODES


def _kind_of(frames: list[Frame]) -> int | None:
    """The kind code in a header frame (its second byte: a positive fixint), if any."""
    header = frames[0] if frames else b""
    return header[2] if len(header) > 2 and header[0] & 0xF0 == 0x90 else None


def _caller(link: Link, msg: m.Call) -> str:
    """The identity of who made ``msg``: the remote, or the caller behind it (a relay)."""
    return link.identity if msg.origin is None else scoped(link.identity, msg.origin)


log = logging.getLogger(__name__)


class Receiver:
    """Turns a Peer's transport events into what they mean.

    Args:
        remotes: The Peer's links.
        dispatcher: The serving side.
        counters: Where calls received and bytes in are counted.
        drop: Counts and logs a message dropped, with the reason.
        clock: The event loop's clock.
    """

    def __init__(
        self,
        *,
        remotes: Remotes,
        dispatcher: Dispatcher,
        counters: Counters,
        drop: Callable[[str], None],
        clock: Callable[[], float],
    ) -> None:
        self._remotes = remotes
        self._links = remotes.links
        self._forwarder = remotes.forwarder
        self._dispatcher = dispatcher
        self._counters = counters
        self._drop = drop
        self._clock = clock
        self._max_body_size = remotes.options.max_body_size
        self._bound = remotes.options.bound
        self._context = contextvars.copy_context()  # the receive loop's, until it runs

    async def run(
        self,
        receive: Callable[[], Awaitable[TransportEvent]],
        closing: Callable[[], bool],
        name: str,
    ) -> None:
        """Handle transport events until we close; if receiving fails, end every link.

        A bad event costs that event (dropped, logged, counted). If ``receive`` itself
        raises, or reports the connection closed while we are not ``closing()``, no event
        will come again: the reason is logged at ERROR and every link ends, so each pending
        call fails with ``PeerDisconnectedError`` instead of waiting for ever.
        """
        self._context = contextvars.copy_context()
        try:
            await self._handle_events(receive)
        except Exception as exc:
            if closing() and isinstance(exc, PeerClosedError):
                return  # our own close
            log.error("%s stopped receiving: %r; its links end", name, exc, exc_info=exc)
            await self._remotes.end_all(f"this peer stopped receiving ({exc!r})")

    async def _handle_events(self, receive: Callable[[], Awaitable[TransportEvent]]) -> None:
        received = self.received
        while True:
            event = await receive()
            if type(event) is Received:  # the common case
                await received(event)
            else:
                await self._other(event)
            del event  # do not hold its frames (maybe a large body) until the next one

    def take(self, event: Received) -> Started | bool:
        """Handle ``event`` now, from a transport callback, if its kind allows (module doc).

        Returns:
            ``True`` when it was handled, what is left of its handling, or ``False`` when it
            is declined (the receive loop handles it).
        """
        # A relay's messages, and kinds that may need a task, are the loop's (module doc); so
        # is a resumable link's enveloped message (its first byte is no msgpack array).
        if self._forwarder is not None or _kind_of(event.frames) not in _TAKEN_CODES:
            return False
        started = self._context.run(Started.start, self.received(event))
        return True if started is None else started

    async def _other(self, event: TransportEvent) -> None:
        try:
            await self.other(event)
        except Exception as exc:
            self._failed(event, exc)

    def _failed(self, event: TransportEvent, exc: Exception) -> None:
        """Handling ``event`` raised ``exc``: the event is dropped (logged, counted)."""
        if isinstance(exc, ProtocolError):
            self._drop(f"protocol violation: {exc}")
        else:
            log.error("error while handling %r; the message is dropped", event, exc_info=exc)
            self._counters.dropped_messages += 1

    async def received(self, event: Received) -> None:
        """A message arrived: decode it, check it against its link, and handle it.

        A bad one costs that message: garbage, or a message not allowed now
        (``ProtocolError``), is dropped, logged and counted, and so is one whose handling
        fails.
        """
        try:
            frames = event.frames
            self._counters.bytes_in += sum(map(len, frames))
            link = self._links.get(event.peer)
            if link is None:
                self._drop("message from an unknown remote")
                return
            if (
                link.replay is not None
                or link.session.state is not LinkState.OPEN
                or frames[0] == _PING[0]
            ):
                frames = await self._screen(link, frames)
                if not frames:
                    return
            try:
                msg = decode(frames, max_body_size=self._max_body_size)
            except OversizeBodyError as exc:
                await self._refuse_oversize(link, exc)
                return
            if type(msg) is ChunkedHead:
                link.session.receive(msg.message, self._clock())
                self._remotes.heard(link)
                await self._chunked_head(link, msg)
                return
            now = self._clock()
            link.session.receive(msg, now)  # type: ignore[arg-type]
            if self._bound:  # a connecting side's one link needs no order
                self._remotes.heard(link)
            if type(msg) not in TRANSFER_KINDS:
                link.saw_other(now)
            pending = self.HANDLERS[type(msg)](self, link, msg)
            if pending is not None:
                await pending
        except Exception as exc:
            self._failed(event, exc)

    async def _screen(self, link: Link, frames: list[Frame]) -> list[Frame]:
        """The frames to decode of a message that is not a plain one; ``[]`` once handled.

        That is a message of a resumable link (without its envelope; ``[]`` for a
        duplicate), a Ping, the one message of an idle
        link, thousands a second on a bound peer with a large fleet (answered without
        decoding or encoding anything), and one on a link that is not open.

        Raises:
            ProtocolError: As ``_unwrap``.
        """
        if link.replay is not None:
            return await self._unwrap(link, frames)
        if frames[0] == _PING[0] and len(frames) == 1 and link.session.is_open:
            link.session.receive(_PING_MESSAGE, self._clock())
            self._remotes.heard(link)
            await link.send_encoded(_PONG)
            return []
        if link.session.state is LinkState.CONNECTING and _left_over(frames):
            # A ZeroMQ DEALER that reconnects first sends what it had queued for its old
            # connection (numbered messages of a suspended session, a ping), then its Hello:
            # expected after every blip, so counted but not warned about. Nothing is lost:
            # unacknowledged, they are sent again once the session resumes.
            self._counters.dropped_messages += 1
            log.debug("dropped a message queued before the remote's Hello")
            return []
        return frames

    async def _unwrap(self, link: Link, frames: list[Frame]) -> list[Frame]:
        """A resumable link's message without its envelope; ``[]`` for a duplicate.

        Raises:
            ProtocolError: A numbered kind came without an envelope, or the envelope says
                messages were lost (the connection is dropped: resuming recovers them) or
                acknowledges what we never sent.
        """
        replay = link.replay
        assert replay is not None
        if not has_envelope(frames):
            if _kind_of(frames) not in _UNSEQUENCED_CODES:
                raise ProtocolError("a message without its sequence number on a resumable link")
            return frames
        try:
            fresh = replay.accept(frames[0], sum(map(len, frames)))
        except ProtocolError:
            await self._remotes.lose(link, LinkInput.LOST, "sequence numbers out of order")
            await self._remotes.disconnect(link.key)
            raise
        if not fresh:
            self._drop(f"message {replay.received} or older, received before")
            return []
        if replay.ack_due():
            link.send_in_background(m.Ack(seq=replay.ack()))
        return frames[1:]

    async def other(self, event: TransportEvent) -> None:
        """A remote connected or went away, or authentication failed."""
        if type(event) is Connected:
            await self._remotes.connected(event)
        elif type(event) is Disconnected:
            if event.slow:
                self._counters.slow_remotes_dropped += 1
            await self._remotes.lost(event.peer, LinkInput.LOST, event.reason)
        elif type(event) is AuthFailed:
            log.warning("authentication failed: %s", event.reason)
            welcomed = self._remotes.welcomed
            if welcomed is not None and not welcomed.done():
                welcomed.set_exception(AuthenticationError(event.reason))

    # -- calls and what belongs to them -----------------------------------------------------------

    # Handlers of the hot kinds are plain functions: they return what is left to wait for,
    # if anything (a coroutine frame per message saved).

    def _call(self, link: Link, msg: m.Call) -> Awaitable[None]:
        self._counters.calls_in += 1
        if msg.target is not None or self._forwarder is not None:
            return self._forward_or_call(link, msg)
        return self._dispatcher.call(link, _caller(link, msg), msg)

    async def _forward_or_call(self, link: Link, msg: m.Call) -> None:
        if not await self._forward(link, msg):
            await self._dispatcher.call(link, _caller(link, msg), msg)

    async def _forward(self, link: Link, msg: m.Call) -> bool:
        """Pass on a call for a peer behind us (or one we do not serve); True once handled."""
        if msg.target is None and self._dispatcher.serves(msg.method):
            return False
        if self._forwarder is not None and await self._forwarder.forward_call(link, msg):
            return True
        if msg.target is None:
            return False  # ours to answer: the dispatcher says MethodNotFound
        text = f"no peer {scoped(self._remotes.identity, msg.target)!r} is reachable here"
        await link.send(m.Error(id=msg.id, code=ErrorCode.PEER_DISCONNECTED, message=text))
        return True

    async def _cancel(self, link: Link, msg: m.Cancel) -> None:
        if self._forwarder is not None and await self._forwarder.forward_control(link, msg):
            return
        await self._dispatcher.cancel(link, msg.id)

    async def _credit(self, link: Link, msg: m.Credit) -> None:
        if self._forwarder is not None and await self._forwarder.forward_control(link, msg):
            return
        self._dispatcher.credit(link, msg.id, msg.amount)

    def _upload(self, link: Link, msg: m.UploadItem | m.UploadEnd) -> None:
        if self._dispatcher.upload(link, msg) is False:
            self._drop(f"upload item for call {msg.id} past its credit or its end")

    # -- replies to our calls ---------------------------------------------------------------------

    def _reply(self, link: Link, msg: m.Message) -> Awaitable[object] | None:
        call_id: int = msg.id  # type: ignore[union-attr]
        if link.session.call_input(call_id, CallInput.REPLY) is None:
            self._drop(f"reply to unknown call {call_id}")
            return None
        future = link.pending.get(call_id)  # an invoke's, the common case (ids are unique)
        if future is not None:
            if not future.done():
                future.set_result(msg)
            return None
        inbox = link.streams.get(call_id)
        if inbox is not None:
            inbox.put(msg)
            return None
        return None if self._forwarder is None else self._forwarder.forward_reply(link, msg)

    def _stream_item(self, link: Link, msg: m.StreamItem) -> Awaitable[None] | None:
        inbox = link.streams.get(msg.id)
        if inbox is None:
            return self._stray_item(link, msg)
        if not inbox.put(msg):
            self._drop(f"stream {msg.id} sent past its credit")
        return None

    async def _stray_item(self, link: Link, msg: m.StreamItem) -> None:
        if self._forwarder is None or not await self._forwarder.forward_reply(link, msg):
            self._drop(f"stream item for unknown stream {msg.id}")

    def _upload_credit(self, link: Link, msg: m.UploadCredit) -> None:
        window = link.uploads.get(msg.id)
        if window is not None and msg.amount >= 1:  # else the upload ended meanwhile
            window.grant(msg.amount)

    # -- the link itself --------------------------------------------------------------------------

    async def _hello(self, link: Link, msg: m.Hello) -> None:
        await self._remotes.hello(link, msg)

    async def _welcome(self, link: Link, msg: m.Welcome) -> None:
        await self._remotes.welcome(link, msg)

    async def _goodbye(self, link: Link, msg: m.Goodbye) -> None:
        await self._remotes.goodbye(link, msg)

    async def _ping(self, link: Link, msg: m.Ping) -> None:
        await link.send(m.Pong())

    def _pong(self, link: Link, msg: m.Pong) -> None:
        """Liveness was recorded by ``session.receive``; nothing else to do."""

    async def _ack(self, link: Link, msg: m.Ack) -> None:
        if link.replay is None:
            raise ProtocolError("Ack on a link that is not resumable")
        link.replay.acknowledged(msg.seq)

    async def _announced(self, link: Link, msg: m.PeerUp | m.PeerDown) -> None:
        self._remotes.announced(link, msg)

    # -- chunked bodies ---------------------------------------------------------------------------

    async def _chunked_head(self, link: Link, head: ChunkedHead) -> None:
        try:
            link.incoming.begin(head)
        except OversizeBodyError as exc:
            stop = m.ChunkStop(transfer=head.transfer, reason="body exceeds max_body_size")
            await link.send(stop)
            await self._refuse_oversize(link, exc)

    async def _chunk(self, link: Link, msg: m.Chunk) -> None:
        try:
            whole = link.incoming.feed(msg)
        except ProtocolError:
            await link.send(m.ChunkStop(transfer=msg.transfer, reason="bad chunk"))
            raise
        if link.incoming.expects(msg.transfer):  # the last chunk needs no ack
            await link.send(m.ChunkAck(transfer=msg.transfer, amount=1))
        if whole is not None and (pending := self.HANDLERS[type(whole)](self, link, whole)):
            await pending

    async def _chunk_ack(self, link: Link, msg: m.ChunkAck) -> None:
        if not link.outgoing.ack(msg.transfer, msg.amount):
            self._drop(f"ack of {msg.amount} for transfer {msg.transfer}, which we never sent")

    async def _chunk_stop(self, link: Link, msg: m.ChunkStop) -> None:
        link.outgoing.stop(msg.transfer)  # a transfer that just finished needs nothing

    async def _chunk_abort(self, link: Link, msg: m.ChunkAbort) -> None:
        link.incoming.abort(msg.transfer)  # one we never saw (its head failed) needs nothing

    async def _refuse_oversize(self, link: Link, exc: OversizeBodyError) -> None:
        self._drop(f"body of {exc.size} bytes exceeds max_body_size {self._max_body_size}")
        if isinstance(exc.message, m.Call) and link.session.is_open:
            code = MessageTooLargeError.code
            text = f"body of {exc.size} bytes exceeds the remote's max_body_size"
            await link.send(m.Error(id=exc.message.id, code=code, message=text))
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

    #: The handler of each message class: every kind that settles a call is a reply. A
    #: handler returns what is left to wait for, or ``None``.
    HANDLERS: Final[dict[type, Callable[[Receiver, Link, Any], Awaitable[object] | None]]] = {
        **dict.fromkeys(m.kinds_with(m.Trait.REPLY), _reply),
        m.Hello: _hello,
        m.Welcome: _welcome,
        m.Call: _call,
        m.Cancel: _cancel,
        m.Ping: _ping,
        m.Pong: _pong,
        m.Ack: _ack,
        m.Goodbye: _goodbye,
        m.StreamItem: _stream_item,
        m.Credit: _credit,
        m.Chunk: _chunk,
        m.ChunkAck: _chunk_ack,
        m.ChunkStop: _chunk_stop,
        m.ChunkAbort: _chunk_abort,
        m.UploadItem: _upload,
        m.UploadEnd: _upload,
        m.UploadCredit: _upload_credit,
        m.PeerUp: _announced,
        m.PeerDown: _announced,
    }
