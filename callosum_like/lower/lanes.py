"""Lanes: which QUIC stream a message travels on, and the barriers that keep the Peer's order.

Theory of operation: over QUIC each message may travel on a stream of its own, so that a
lost packet holds back only the messages of that stream. The Peer above does not say which
messages may overtake which; it relies on a few orders (docs/PROTOCOL.md): the handshake
before anything else, a call's own messages in order (its request, its chunks and upload
items; its reply after its stream items), calls of one ``order_key`` in the order made, the
numbered messages of a resumable session in sequence, and its last replies before its
Goodbye. This module reads the already-encoded header of each outgoing message (never its
body) and assigns it a **lane**; the transport keeps one QUIC stream per open lane, so every
lane is delivered in order and lanes are independent:

==============================================  =============================================
message                                          lane
==============================================  =============================================
``Call`` with an ``order_key``                   the key's lane (``("key", key)``), shared
                                                 by every call of that key
other ``Call``                                   its own lane (``("call", id)``), which also
                                                 carries its upload items
``UploadItem``/``UploadEnd`` of a call           the lane its ``Call`` took
replies: ``Result``, ``Failure``, ``Error``,     the reply lane of that call (``("reply",
``StreamItem``, ``StreamEnd``                    id)``), in order
``Chunk``/``ChunkAbort``                         the lane of the message they are the body of
``Hello``, ``Welcome``, ``Goodbye``, ``Cancel``  the control lane, as a **barrier** (below);
and ``Cancelled``                                a ``Cancel`` resets the call's own lane, a
                                                 ``Cancelled`` the call's reply lane
everything else (pings, credits, acks,           the control lane
announcements, numbered messages of a
resumable session, anything unparsed)
==============================================  =============================================

A lane ends (the transport finishes its stream, which frees QUIC's stream credit) after its
last message: a call's lane after its request when that has no chunks or upload items to
follow, else after its last chunk (the transport counts the body's bytes against the size
the head announced) or its ``UploadEnd``; a reply lane after the final reply's last byte. A
reset lane's stream is reset instead (its unsent data dropped) where every message on it was
sent in the current epoch, with ``reset_code(epoch, count)`` as the error code, so that the
receiver's ``LaneGate.lost`` counts the messages that never come; else it is finished. Key
lanes stay open (at most ``MAX_KEY_LANES``; the least recently used one is finished beyond
that, and the next call of a key whose lane was finished is then sent as a
barrier, so that it cannot overtake the calls of its finished stream; the last
``MAX_EVICTED_KEYS`` such keys are remembered, and past that every new key is a barrier).

Barriers: messages that must not overtake anything sent before them, nor be overtaken by
anything sent after them (the handshake, the Goodbye, a Cancel, which must not arrive before
its call). ``LaneSender.stamp`` numbers the *epochs* between barriers: an ordinary message
carries the number of barriers sent before it, a barrier carries how many ordinary messages
were sent since the previous barrier. ``LaneGate`` on the receiving side delivers an ordinary
message only once every barrier before it is delivered, and a barrier only once every
ordinary message before it is: so each barrier is in its place in the total order, and
between barriers the lanes are free. Barriers are rare (a link's first and last messages,
cancellations), so lanes rarely wait for one another.

This module is sans-IO: bytes in, decisions out; ``lower/quic_link.py`` applies them.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias, cast

import msgpack

from ..errors import ProtocolError
from ..wire.codec import FLAG_CHUNKED, FLAG_COMPRESSED
from ..wire.messages import MessageKind as K

__all__ = [
    "Lane",
    "Plan",
    "LanePlanner",
    "LaneSender",
    "LaneGate",
    "CONTROL",
    "MAX_KEY_LANES",
    "MAX_HELD_SIZE",
    "STAMP_SIZE",
    "parse_stamp",
    "reset_code",
    "parse_reset_code",
]

#: A lane's name: ``("control", None)``, ``("key", key)``, ``("call", id)``, ``("reply", id)``.
Lane: TypeAlias = tuple[str, object]
#: The lane of link-level messages: the handshake, pings, credits, acknowledgements.
CONTROL: Final[Lane] = ("control", None)
#: Key lanes kept open at once: the calls of more keys than this share no stream credit
#: (QUIC grants a peer a bounded number of open streams) and finish the least recent lane.
MAX_KEY_LANES: Final = 64
#: Keys of finished key lanes remembered (so that their next call is sent as a barrier).
MAX_EVICTED_KEYS: Final = 4096
#: Open transfers (chunked bodies) a sender tracks; a receiver holds at most 16 per link.
MAX_TRANSFERS: Final = 256
#: Bytes of messages a receiver holds for a barrier that has not arrived (a remote that
#: withholds one cannot make us hold more): beyond it the connection is a protocol violation.
MAX_HELD_SIZE: Final = 64 * 1024 * 1024

_FINAL_REPLIES: Final = frozenset({K.RESULT, K.FAILURE, K.ERROR, K.CANCELLED, K.STREAM_END})
_REPLIES: Final = _FINAL_REPLIES | {K.STREAM_ITEM}
_BARRIERS: Final = frozenset({K.HELLO, K.WELCOME, K.GOODBYE, K.CANCEL})
_ENVELOPE_SIZE: Final = 17  # a resumable session's leading frame (PROTOCOL.md §14)

_STAMP: Final = struct.Struct(">BQ")
#: The size of the stamp frame that precedes each message on a QUIC stream.
STAMP_SIZE: Final = _STAMP.size
_ORDINARY: Final = 0
_BARRIER: Final = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """Where one message goes.

    Attributes:
        lane: Its lane.
        barrier: Whether it is a barrier (see the module doc).
        last: Whether it is the last message of its lane (the stream is finished with it).
        reset: A lane whose stream to reset before it is sent (a cancelled call's own lane,
            the reply lane of a call answered ``Cancelled``): what it still holds unsent
            is of no use.
    """

    lane: Lane
    barrier: bool = False
    last: bool = False
    reset: Lane | None = None


_CONTROL_PLAN: Final = Plan(CONTROL)


@dataclass(slots=True)
class _Transfer:
    """A chunked body being sent: its lane, and how many of its bytes are still to come."""

    lane: Lane
    remaining: int


def _header(frames: Sequence[bytes | bytearray | memoryview]) -> list[object] | None:
    """The message's decoded header, or ``None`` (numbered, or not one of ours)."""
    first = frames[0]
    if len(first) == _ENVELOPE_SIZE and first[0] == 0xC1:
        return None  # a resumable session's numbered message: in sequence, on the control lane
    try:
        header = msgpack.unpackb(first, raw=False, strict_map_key=False)
    except Exception:  # not a header of ours (a conformance test's raw frames): control
        return None
    if not isinstance(header, list) or len(header) < 3:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in header[1:3]):
        return None
    return header


def _body_size(header: list[object], body: bytes | bytearray | memoryview) -> int:
    """The uncompressed size of a chunk's body (a raw snappy body says it in a varint)."""
    flags = header[2]
    if not isinstance(flags, int) or not flags & FLAG_COMPRESSED:
        return len(body)
    size = shift = 0
    for byte in bytes(body[:10]):
        size |= (byte & 0x7F) << shift
        if byte < 0x80:
            return size
        shift += 7
    return len(body)


class LanePlanner:
    """The sending side's lane assignment (see the module doc); one per QUIC connection.

    ``plan(frames)`` returns the message's ``Plan`` and the lanes it makes end without a
    message of their own (a key lane pushed out, a cancelled call's upload lane): the
    transport finishes their streams, if open.
    """

    def __init__(self) -> None:
        self._keys: OrderedDict[object, None] = OrderedDict()  # open key lanes, by recency
        self._keyed_uploads: dict[int, Lane] = {}  # our keyed upload calls -> their key lane
        self._transfers: OrderedDict[int, _Transfer] = OrderedDict()
        self._closing: set[Lane] = set()  # lanes to end once their transfers are sent
        #: Keys whose lane was finished while their calls may still be under way (recent
        #: ones); once more were pushed out than it holds, every new key is a barrier.
        self._evicted: OrderedDict[object, None] = OrderedDict()
        self._forgot = False

    def plan(self, frames: Sequence[bytes | bytearray | memoryview]) -> tuple[Plan, list[Lane]]:
        """The plan for one outgoing message, and the lanes it ends otherwise."""
        header = _header(frames)
        if header is None:
            return _CONTROL_PLAN, []
        kind, flags = cast(int, header[1]), header[2]
        chunked = isinstance(flags, int) and bool(flags & FLAG_CHUNKED)
        ident = header[3] if len(header) > 3 else None
        if not isinstance(ident, int) or isinstance(ident, bool):
            return Plan(CONTROL, barrier=kind in _BARRIERS), []
        if kind == K.CANCEL:
            return Plan(CONTROL, barrier=True, reset=self._cancelled(("call", ident))), []
        if kind == K.CANCELLED:
            return Plan(CONTROL, barrier=True, reset=self._cancelled(("reply", ident))), []
        if kind == K.CALL:
            return self._call(header, ident, chunked)
        if kind in _REPLIES:
            return self._ending(("reply", ident), header, chunked, kind in _FINAL_REPLIES), []
        if kind in (K.UPLOAD_ITEM, K.UPLOAD_END):
            lane = self._keyed_uploads.get(ident, ("call", ident))
            final = kind == K.UPLOAD_END
            if final:
                self._keyed_uploads.pop(ident, None)
            return self._ending(lane, header, chunked, final and lane[0] == "call"), []
        if kind in (K.CHUNK, K.CHUNK_ABORT):
            return self._chunk(kind, ident, header, frames), []
        return Plan(CONTROL, barrier=kind in _BARRIERS), []

    def _call(self, header: list[object], ident: int, chunked: bool) -> tuple[Plan, list[Lane]]:
        if len(header) < 10:
            return _CONTROL_PLAN, []
        key, upload = header[5], header[9] is True
        if key is None:
            return self._ending(("call", ident), header, chunked, not upload), []
        lane: Lane = ("key", key)
        ended: list[Lane] = []
        barrier = False
        if key not in self._keys:
            # its earlier calls may be on a finished stream that this one must not overtake
            barrier = self._forgot or self._evicted.pop(key, False) is None
            if len(self._keys) >= MAX_KEY_LANES:
                old, _ = self._keys.popitem(last=False)
                ended.append(("key", old))
                self._evicted[old] = None
                if len(self._evicted) > MAX_EVICTED_KEYS:
                    self._evicted.popitem(last=False)
                    self._forgot = True
        self._keys[key] = None
        self._keys.move_to_end(key)
        if upload:
            self._keyed_uploads[ident] = lane
        plan = self._ending(lane, header, chunked, False)
        return Plan(lane, barrier=barrier, last=plan.last), ended

    def _ending(self, lane: Lane, header: list[object], chunked: bool, final: bool) -> Plan:
        """A message on ``lane``; ``final``: the lane ends once it (and its body) is sent."""
        if chunked:
            transfer, size = header[-2], header[-1]
            if isinstance(transfer, int) and isinstance(size, int):
                self._transfers[transfer] = _Transfer(lane, size)
                while len(self._transfers) > MAX_TRANSFERS:
                    self._transfers.popitem(last=False)
                if final:
                    self._closing.add(lane)
                return Plan(lane)
        if final and self._sending(lane):
            self._closing.add(lane)  # a body of an earlier message is still on its way
            return Plan(lane)
        return Plan(lane, last=final)

    def _sending(self, lane: Lane) -> bool:
        return any(t.lane == lane for t in self._transfers.values())

    def _chunk(
        self,
        kind: int,
        transfer_id: int,
        header: list[object],
        frames: Sequence[bytes | bytearray | memoryview],
    ) -> Plan:
        transfer = self._transfers.get(transfer_id)
        if transfer is None:
            return _CONTROL_PLAN  # an aborted or forgotten transfer's late abort
        if kind == K.CHUNK and len(frames) > 1:
            transfer.remaining -= _body_size(header, frames[-1])
            if transfer.remaining > 0:
                return Plan(transfer.lane)
        del self._transfers[transfer_id]
        lane = transfer.lane
        if lane in self._closing and not self._sending(lane):
            self._closing.discard(lane)
            return Plan(lane, last=True)
        return Plan(lane)

    def _cancelled(self, lane: Lane) -> Lane:
        """A call is cancelled: its ``lane`` (its upload's, or its replies') is to be reset."""
        if lane[0] == "call":
            self._keyed_uploads.pop(cast(int, lane[1]), None)
        for transfer_id in [t for t, v in self._transfers.items() if v.lane == lane]:
            del self._transfers[transfer_id]
        self._closing.discard(lane)
        return lane


class LaneSender:
    """Stamps each outgoing message with its epoch, or a barrier with its epoch's size."""

    def __init__(self) -> None:
        self._epoch = 0  # barriers sent so far
        self._since = 0  # ordinary messages sent since the last barrier

    @property
    def epoch(self) -> int:
        """The epoch the next ordinary message belongs to (barriers sent so far)."""
        return self._epoch

    def stamp(self, barrier: bool) -> bytes:
        """The stamp frame to send before a message (see the module doc)."""
        if barrier:
            stamp = _STAMP.pack(_BARRIER, self._since)
            self._epoch += 1
            self._since = 0
            return stamp
        self._since += 1
        return _STAMP.pack(_ORDINARY, self._epoch)


def parse_stamp(frame: bytes | bytearray | memoryview) -> tuple[bool, int]:
    """``(barrier, number)`` from a stamp frame.

    Raises:
        ProtocolError: It is not a stamp.
    """
    if len(frame) != STAMP_SIZE:
        raise ProtocolError(f"a message's stamp has {STAMP_SIZE} bytes, not {len(frame)}")
    tag, number = _STAMP.unpack(frame)
    if tag not in (_ORDINARY, _BARRIER):
        raise ProtocolError(f"unknown stamp tag {tag}")
    return tag == _BARRIER, number


#: Bits of a reset's error code that count the stream's messages (the rest: their epoch).
_RESET_COUNT_BITS: Final = 24


def reset_code(epoch: int, count: int) -> int | None:
    """The error code of a reset stream that held ``count`` messages, all of ``epoch``.

    ``None``: too many to say (the stream is finished instead).
    """
    if count >> _RESET_COUNT_BITS or epoch >> (62 - _RESET_COUNT_BITS):
        return None
    return epoch << _RESET_COUNT_BITS | count


def parse_reset_code(code: int) -> tuple[int, int]:
    """``(epoch, count)`` from a reset stream's error code (see ``reset_code``)."""
    return code >> _RESET_COUNT_BITS, code & ((1 << _RESET_COUNT_BITS) - 1)


Message: TypeAlias = list[bytes | bytearray | memoryview]


class LaneGate:
    """The receiving side: releases messages in an order that keeps every barrier in place.

    ``arrive(stamp, frames)`` takes each message as its stream delivers it and returns the
    messages it releases, in order. Ordinary messages of the current epoch pass at once;
    later ones wait for their barrier; a barrier waits for the ordinary messages of its
    epoch (the count it carries).
    """

    def __init__(self, max_held_size: int = MAX_HELD_SIZE) -> None:
        self._epoch = 0  # barriers delivered
        self._count = 0  # ordinary messages delivered in the current epoch
        self._barriers: deque[tuple[int, Message]] = deque()
        self._held: dict[int, list[Message]] = {}
        self._held_size = 0
        self._max_held_size = max_held_size
        self._lost: dict[int, int] = {}  # epoch -> its messages on reset streams

    @property
    def held(self) -> int:
        """Messages waiting for a barrier (or a barrier waiting for its epoch)."""
        return len(self._barriers) + sum(map(len, self._held.values()))

    def arrive(self, stamp: bytes | bytearray | memoryview, frames: Message) -> list[Message]:
        """Take one message; return what it releases.

        Raises:
            ProtocolError: The stamp is malformed or contradicts the ones before it, or too
                much is held for a barrier that does not come.
        """
        barrier, number = parse_stamp(stamp)
        if barrier:
            self._barriers.append((number, frames))
            self._hold(frames)
            return self._advance([])
        if number == self._epoch:
            self._count += 1
            return self._advance([frames])
        if number < self._epoch:
            raise ProtocolError(f"a message of epoch {number} after barrier {self._epoch}")
        self._held.setdefault(number, []).append(frames)
        self._hold(frames)
        return []

    def lost(self, epoch: int, count: int) -> list[Message]:
        """``count`` ordinary messages of ``epoch`` will never come (their stream was reset).

        Returns what that releases.

        Raises:
            ProtocolError: Messages of an epoch already closed are said to be lost.
        """
        if count <= 0:
            return []
        if epoch < self._epoch:
            raise ProtocolError(f"{count} messages of closed epoch {epoch} reset")
        if epoch > self._epoch:
            self._lost[epoch] = self._lost.get(epoch, 0) + count
            return []
        self._count += count
        return self._advance([])

    def _hold(self, frames: Message) -> None:
        self._held_size += sum(map(len, frames))
        if self._held_size > self._max_held_size:
            raise ProtocolError(f"over {self._max_held_size} bytes held for a missing barrier")

    def _advance(self, out: list[Message]) -> list[Message]:
        barriers = self._barriers
        while barriers:
            needed, frames = barriers[0]
            if self._count < needed:
                break
            if self._count > needed:
                raise ProtocolError(f"{self._count} messages in an epoch announced as {needed}")
            barriers.popleft()
            self._held_size -= sum(map(len, frames))
            out.append(frames)
            self._epoch += 1
            released = self._held.pop(self._epoch, [])
            for message in released:
                self._held_size -= sum(map(len, message))
                out.append(message)
            self._count = len(released) + self._lost.pop(self._epoch, 0)
        return out
