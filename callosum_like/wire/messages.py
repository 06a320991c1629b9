"""The messages of the callosum_like wire protocol, one frozen class per kind.

Theory of operation: these are plain values. They know nothing of sockets, of msgpack
framing or of futures. ``wire.codec`` turns them into frames and back; ``session`` and the
Peer act on them. A message that carries an application body keeps it already
msgpack-packed (``PackedBody``), so that a body is packed exactly once on the way out and
unpacked exactly once on the way in (at the point of use). A large body is a ``LargeBody``:
its packed bytes as a few pieces, so that a large ``bytes`` value is never copied whole.
See docs/PROTOCOL.md for the frame layout.

Don't subclass these: the codec dispatches on the exact class.
"""

from __future__ import annotations

import enum
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias, TypeVar, dataclass_transform, overload

from .bodies import LargeBody, PackedBody

__all__ = [
    "PROTOCOL_VERSION",
    "MessageKind",
    "Trait",
    "MESSAGE_CLASSES",
    "kinds_with",
    "value_class",
    "Hello",
    "Welcome",
    "Call",
    "Result",
    "Failure",
    "Error",
    "Cancel",
    "Cancelled",
    "Ping",
    "Pong",
    "Ack",
    "Goodbye",
    "StreamItem",
    "StreamEnd",
    "Credit",
    "Chunk",
    "ChunkAck",
    "ChunkAbort",
    "ChunkStop",
    "UploadItem",
    "UploadEnd",
    "UploadCredit",
    "PeerUp",
    "PeerDown",
    "Message",
    "CallReply",
    "EMPTY_BODY",
    "LargeBody",
    "PackedBody",
    "STREAM_WINDOW",
    "MAX_FAILURE_TEXT",
    "ROUTE_SEPARATOR",
    "MAX_ROUTE_LENGTH",
    "is_route",
]

#: Bumped on any incompatible change of the frame layout; a peer drops other versions.
PROTOCOL_VERSION: Final = 1

#: Stream items a producer may send before the consumer's first ``Credit``; the consumer
#: grants more as it takes items, so at most this many are ever in flight or buffered.
STREAM_WINDOW: Final = 16

#: ``msgpack.packb(None)``: the body of a call made with ``body=None``.
EMPTY_BODY: Final = b"\xc0"

#: Longest ``repr`` and ``traceback`` text a ``Failure`` carries, in characters. At up to 4
#: UTF-8 bytes a character, both together stay under half of ``codec.MAX_HEADER_SIZE``
#: (1 MiB), so a handler that raises with a huge message still gets its reply through.
MAX_FAILURE_TEXT: Final = 64 * 1024

#: Separates the hops of a hierarchical peer name: ``"cluster-b/agent-3"`` is ``agent-3`` as
#: announced by the link named ``cluster-b`` (docs/federation.md).
ROUTE_SEPARATOR: Final = "/"
#: Longest route (``Call.target``, ``Call.origin``, ``PeerUp.peer``) in characters: deep
#: enough for any sane relay hierarchy, and it bounds what a remote makes us store per name.
MAX_ROUTE_LENGTH: Final = 1024


def is_route(text: str) -> bool:
    """Whether ``text`` is a well-formed route: non-empty names joined by ``/``."""
    return 0 < len(text) <= MAX_ROUTE_LENGTH and "" not in text.split(ROUTE_SEPARATOR)


def _clip(text: str) -> str:
    """Keep the head and the tail of ``text`` (outer frames, innermost frame and message)."""
    if len(text) <= MAX_FAILURE_TEXT:
        return text
    half = MAX_FAILURE_TEXT // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


_C = TypeVar("_C", bound=type)


@overload
def value_class(cls: _C, /) -> _C: ...
@overload
def value_class(*, kw_only: bool = False) -> Callable[[_C], _C]: ...


@dataclass_transform(frozen_default=True)
def value_class(cls: _C | None = None, /, *, kw_only: bool = False) -> Any:
    """Make ``cls`` a value class: a dataclass with slots, frozen for the type checker only.

    Messages (``@value_class(kw_only=True)``) and the transport's events (``@value_class``)
    are values: the type checker treats them as frozen (assigning to a field is an error),
    but at run time they are not, because a frozen dataclass's ``__init__`` sets every field
    through ``object.__setattr__``: 1.2 us for a ``Call`` instead of 0.2 us, 0.48 us for a
    ``Received`` instead of 0.15 us, several times per call on the hot path
    (docs/performance.md). They hash by value, as a frozen dataclass would. Build a changed
    copy with ``dataclasses.replace``; never assign to a field.
    """

    def make(cls: _C) -> _C:
        return dataclass(slots=True, kw_only=kw_only, unsafe_hash=True)(cls)  # type: ignore[return-value]

    return make if cls is None else make(cls)


class MessageKind(enum.IntEnum):
    """The wire code of each message kind (second element of every header)."""

    HELLO = 1
    WELCOME = 2
    CALL = 3
    RESULT = 4
    FAILURE = 5
    ERROR = 6
    CANCEL = 7
    CANCELLED = 8
    PING = 9
    PONG = 10
    GOODBYE = 11
    STREAM_ITEM = 12
    STREAM_END = 13
    CREDIT = 14
    # 15-16 announce peers behind a relay; 18-19 are free; 20-23 carry chunked bodies.
    PEER_UP = 15
    PEER_DOWN = 16
    # 17: acknowledges the messages of a resumable session (docs/PROTOCOL.md, resumption).
    ACK = 17
    CHUNK = 20
    CHUNK_ACK = 21
    CHUNK_ABORT = 22
    CHUNK_STOP = 23
    # 24-26: the body of a call streamed from the caller (``invoke`` of an async iterable).
    UPLOAD_ITEM = 24
    UPLOAD_END = 25
    UPLOAD_CREDIT = 26


class Trait(enum.Enum):
    """What a message kind is, declared once on its class (``TRAITS``).

    The codec, the session's tables, the Peer's send and receive paths and the relay's
    forwarding rules derive what they do with a kind from these: a new kind declares its
    traits and gets a handler (tests fail for a kind without one).
    """

    HANDSHAKE = "handshake"  # opens a link: the only kinds a new link accepts
    LINK = "link"  # about the link itself, between the two ends of one hop (ping, goodbye)
    CALL = "call"  # starts a call
    BODY = "body"  # carries an application body, so may travel in chunks
    REPLY = "reply"  # settles a call: the last message its caller gets
    STREAM = "stream"  # an item of a call's streamed answer, towards the caller
    CONTROL = "control"  # from a call's caller about the call in flight, towards its callee
    UPLOAD = "upload"  # a call's streamed body and its credit
    TRANSFER = "transfer"  # the chunks of one large message, within one hop
    ROUTES = "routes"  # names a relay below announces


_T = Trait


@value_class(kw_only=True)
class Hello:
    """First message of the connecting side: who it is and what it accepts.

    Attributes:
        identity: The name the connecting peer asks to be known by.
        max_body_size: The largest body this side accepts, in bytes.
        token: The connecting ``Peer``'s reconnect token: random, the same in every Hello
            of that Peer object and of no other. A Hello with the token of an open link of
            the same identity replaces that link (the peer reconnected); links of one
            identity with other tokens (or none) are served side by side.
        session: The id of the resumable session this link opens or resumes; ``None`` for a
            link that is not resumable.
        received: For a resumption, the sequence number of the last message this side
            received in the session; ``None`` to open the session.
    """

    KIND: ClassVar = MessageKind.HELLO
    TRAITS: ClassVar = frozenset({_T.HANDSHAKE})
    identity: str
    max_body_size: int
    token: str | None = None
    session: str | None = None
    received: int | None = None


@value_class(kw_only=True)
class Welcome:
    """The bound side's answer to ``Hello``; the link is open once it arrives.

    Attributes:
        identity: The bound peer's own identity.
        assigned: The identity the bound side registered the caller under (the authenticated
            user id under CURVE, else the identity from ``Hello``).
        max_body_size: The largest body the bound side accepts, in bytes.
        session: The Hello's session id when the bound side keeps the session resumable;
            ``None`` when the link is not resumable.
        received: For a resumption, the sequence number of the last message the bound side
            received in the session; ``None`` for a new session.
    """

    KIND: ClassVar = MessageKind.WELCOME
    TRAITS: ClassVar = frozenset({_T.HANDSHAKE})
    identity: str
    assigned: str
    max_body_size: int
    session: str | None = None
    received: int | None = None


@value_class(kw_only=True)
class Call:
    """A request to run ``method``; the reply names the same ``id``.

    Attributes:
        id: The caller's sequence number for this call, unique among its pending calls.
        method: The method name.
        body: The packed msgpack body.
        order_key: Requests with the same key from the same caller are ordered.
        headers: Per-call metadata, or ``None``.
        timeout: Seconds the caller will wait; the callee cancels the handler after it.
        stream: The caller expects a stream of ``StreamItem`` and a ``StreamEnd``.
        upload: The body follows as ``UploadItem`` messages and an ``UploadEnd``; the
            handler reads them as an async iterator (``body`` is empty).
        target: Where a relay should take the call: the route below the receiver
            (``"agent-3"``, ``"sub/agent-1"``), or ``None`` for the receiver itself.
        origin: For a call a relay forwards upwards, the caller's route below the sending
            link (``"agent-3"``); ``None`` when the sender itself is the caller.
    """

    KIND: ClassVar = MessageKind.CALL
    TRAITS: ClassVar = frozenset({_T.CALL, _T.BODY})
    id: int
    method: str
    body: PackedBody = EMPTY_BODY
    order_key: str | None = None
    headers: dict[str, str | bytes] | None = None
    timeout: float | None = None
    stream: bool = False
    upload: bool = False
    target: str | None = None
    origin: str | None = None


@value_class(kw_only=True)
class Result:
    """The handler's return value for call ``id``."""

    KIND: ClassVar = MessageKind.RESULT
    TRAITS: ClassVar = frozenset({_T.REPLY, _T.BODY})
    id: int
    body: PackedBody = EMPTY_BODY


@value_class(kw_only=True)
class Failure:
    """The handler for call ``id`` raised; carries what the caller needs to report it.

    Attributes:
        id: The call id.
        name: Qualified class name of the exception.
        repr: ``repr()`` of the exception.
        traceback: The formatted traceback.
    """

    KIND: ClassVar = MessageKind.FAILURE
    TRAITS: ClassVar = frozenset({_T.REPLY})
    id: int
    name: str
    repr: str
    traceback: str

    @classmethod
    def from_exception(cls, id: int, exc: BaseException) -> Failure:  # noqa: A002
        """Describe ``exc`` (with its traceback) as the failure of call ``id``."""
        kind = type(exc)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__"):
            name = f"{kind.__module__}.{name}"
        text = "".join(tb.format_exception(exc))
        return cls(id=id, name=name, repr=_clip(repr(exc)), traceback=_clip(text))


@value_class(kw_only=True)
class Error:
    """The framework, not the handler, failed call ``id``; ``code`` is an ``ErrorCode``."""

    KIND: ClassVar = MessageKind.ERROR
    TRAITS: ClassVar = frozenset({_T.REPLY})
    id: int
    code: int
    message: str


@value_class(kw_only=True)
class Cancel:
    """The caller gave up on call ``id`` (timeout or cancellation): stop the handler."""

    KIND: ClassVar = MessageKind.CANCEL
    TRAITS: ClassVar = frozenset({_T.CONTROL})
    id: int


@value_class(kw_only=True)
class Cancelled:
    """The callee cancelled call ``id`` (its execute timeout, or it is closing)."""

    KIND: ClassVar = MessageKind.CANCELLED
    TRAITS: ClassVar = frozenset({_T.REPLY})
    id: int
    reason: str = ""


@value_class(kw_only=True)
class Ping:
    """Heartbeat request; the other side answers ``Pong``. Any message proves liveness."""

    KIND: ClassVar = MessageKind.PING
    TRAITS: ClassVar = frozenset({_T.LINK})


@value_class(kw_only=True)
class Pong:
    """Heartbeat answer."""

    KIND: ClassVar = MessageKind.PONG
    TRAITS: ClassVar = frozenset({_T.LINK})


@value_class(kw_only=True)
class Ack:
    """On a resumable link: every message up to sequence number ``seq`` arrived.

    The sender may forget those; what it still holds is sent again after a resumption.
    """

    KIND: ClassVar = MessageKind.ACK
    TRAITS: ClassVar = frozenset({_T.LINK})
    seq: int


@value_class(kw_only=True)
class Goodbye:
    """The sender is closing the link on purpose; fail what is pending at once."""

    KIND: ClassVar = MessageKind.GOODBYE
    TRAITS: ClassVar = frozenset({_T.LINK})
    reason: str = ""


@value_class(kw_only=True)
class StreamItem:
    """One item yielded by the stream handler of call ``id``."""

    KIND: ClassVar = MessageKind.STREAM_ITEM
    TRAITS: ClassVar = frozenset({_T.STREAM, _T.BODY})
    id: int
    body: PackedBody = EMPTY_BODY


@value_class(kw_only=True)
class StreamEnd:
    """The stream handler of call ``id`` finished without error."""

    KIND: ClassVar = MessageKind.STREAM_END
    TRAITS: ClassVar = frozenset({_T.REPLY})
    id: int


@value_class(kw_only=True)
class Credit:
    """The consumer of stream ``id`` can take ``amount`` more items."""

    KIND: ClassVar = MessageKind.CREDIT
    TRAITS: ClassVar = frozenset({_T.CONTROL})
    id: int
    amount: int


@value_class(kw_only=True)
class Chunk:
    """The next part of the body of chunked ``transfer`` (see ``codec.ChunkedHead``).

    The transfer is complete when its parts add up to the size its head announced.
    """

    KIND: ClassVar = MessageKind.CHUNK
    TRAITS: ClassVar = frozenset({_T.TRANSFER})
    transfer: int
    body: bytes = b""


@value_class(kw_only=True)
class ChunkAck:
    """From the receiver of ``transfer``: it took ``amount`` more chunks; send as many more."""

    KIND: ClassVar = MessageKind.CHUNK_ACK
    TRAITS: ClassVar = frozenset({_T.TRANSFER})
    transfer: int
    amount: int


@value_class(kw_only=True)
class ChunkAbort:
    """From the sender of ``transfer``: no more chunks will come; forget what arrived."""

    KIND: ClassVar = MessageKind.CHUNK_ABORT
    TRAITS: ClassVar = frozenset({_T.TRANSFER})
    transfer: int


@value_class(kw_only=True)
class ChunkStop:
    """From the receiver of ``transfer``: it refused the body (too large); stop sending."""

    KIND: ClassVar = MessageKind.CHUNK_STOP
    TRAITS: ClassVar = frozenset({_T.TRANSFER})
    transfer: int
    reason: str = ""


@value_class(kw_only=True)
class UploadItem:
    """From the caller: the next item of the streamed body of its call ``id``."""

    KIND: ClassVar = MessageKind.UPLOAD_ITEM
    TRAITS: ClassVar = frozenset({_T.UPLOAD, _T.BODY})
    id: int
    body: PackedBody = EMPTY_BODY


@value_class(kw_only=True)
class UploadEnd:
    """From the caller: the streamed body of its call ``id`` is complete."""

    KIND: ClassVar = MessageKind.UPLOAD_END
    TRAITS: ClassVar = frozenset({_T.UPLOAD})
    id: int


@value_class(kw_only=True)
class UploadCredit:
    """From the callee: the handler of call ``id`` took ``amount`` more uploaded items."""

    KIND: ClassVar = MessageKind.UPLOAD_CREDIT
    TRAITS: ClassVar = frozenset({_T.UPLOAD})
    id: int
    amount: int


@value_class(kw_only=True)
class PeerUp:
    """A relay announces that ``peer`` is reachable through it (relay -> bound side).

    The receiver knows it as ``"<the relay's identity>/<peer>"``, never outside that subtree.

    Attributes:
        peer: The route of the peer below the relay (``"agent-3"``, ``"sub/agent-1"``).
    """

    KIND: ClassVar = MessageKind.PEER_UP
    TRAITS: ClassVar = frozenset({_T.ROUTES})
    peer: str


@value_class(kw_only=True)
class PeerDown:
    """A relay announces that ``peer``, announced before, is gone.

    Attributes:
        peer: The route of the peer below the relay.
        reason: Why it went away.
    """

    KIND: ClassVar = MessageKind.PEER_DOWN
    TRAITS: ClassVar = frozenset({_T.ROUTES})
    peer: str
    reason: str = ""


Message: TypeAlias = (
    Hello
    | Welcome
    | Call
    | Result
    | Failure
    | Error
    | Cancel
    | Cancelled
    | Ping
    | Pong
    | Ack
    | Goodbye
    | StreamItem
    | StreamEnd
    | Credit
    | Chunk
    | ChunkAck
    | ChunkAbort
    | ChunkStop
    | UploadItem
    | UploadEnd
    | UploadCredit
    | PeerUp
    | PeerDown
)
#: The messages that settle a pending call (``StreamEnd`` settles a stream call).
CallReply: TypeAlias = Result | Failure | Error | Cancelled | StreamEnd

#: Every message class, in wire-code order: the one list the codec and the tables derive from.
MESSAGE_CLASSES: Final[tuple[type[Message], ...]] = tuple(
    sorted(
        (Hello, Welcome, Call, Result, Failure, Error, Cancel, Cancelled, Ping, Pong, Ack, Goodbye,
         StreamItem, StreamEnd, Credit, Chunk, ChunkAck, ChunkAbort, ChunkStop, UploadItem,
         UploadEnd, UploadCredit, PeerUp, PeerDown),
        key=lambda cls: int(cls.KIND),
    )
)  # fmt: skip


def kinds_with(trait: Trait) -> frozenset[type[Message]]:
    """The message classes that declare ``trait``."""
    return frozenset(cls for cls in MESSAGE_CLASSES if trait in cls.TRAITS)
