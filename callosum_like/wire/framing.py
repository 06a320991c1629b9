"""Length-prefixed framing of multi-frame messages over a byte stream, with no I/O.

Theory of operation: the TCP transport (and any other stream transport) sends a message as

    u16 frame count | for each frame: u32 length | length bytes      (all big-endian)

``FrameDecoder.feed`` takes whatever bytes arrived (one byte at a time is fine) and returns
the complete messages. It never buffers more than one incomplete message, and it refuses
(``ProtocolError``) a frame count over ``MAX_FRAMES`` or a frame over ``max_frame_size``
*before* reading its bytes, so a hostile stream cannot make it allocate without bound. After
an error the stream is out of sync; the transport must close the connection.

``split_batch`` reads the same layout from one complete buffer: the ZeroMQ transport packs the
small messages of one loop iteration back to back into a single ZeroMQ frame (a *batch*, see
docs/PROTOCOL.md) and the receiver splits it here. A batch is all or nothing: a bad frame
count, or bytes that end inside a message, refuse the whole batch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, TypeAlias

from ..errors import ProtocolError

__all__ = [
    "Buffer",
    "MAX_FRAMES",
    "LARGE_FRAME",
    "encode_message",
    "framed_size",
    "FrameEncoder",
    "FrameDecoder",
    "pack_batch",
    "split_batch",
]

#: What a frame may be: ``bytes``, or a buffer handed over without a copy.
Buffer: TypeAlias = bytes | bytearray | memoryview

#: Our messages have 1 or 2 frames; 16 leaves room for extensions and bounds the header work.
MAX_FRAMES: Final = 16

_COUNT = struct.Struct("!H")
_LENGTH = struct.Struct("!I")
#: A message's frame count and the length of its first frame, read or written at once.
_HEAD = struct.Struct("!HI")
#: The prefixes of a message of two frames: its count and two lengths.
_TWO_FRAMES: Final = _COUNT.size + 2 * _LENGTH.size
#: The largest length a u32 prefix can state: frames must be under 4 GiB.
_MAX_LENGTH: Final = 2**32 - 1
#: A frame at least this large that arrives in pieces is kept as those pieces (whole chunks
#: read off the socket are kept as they are, not copied) and joined once, into ``bytes``, when
#: its last piece arrives. Smaller frames are gathered in one growing buffer.
LARGE_FRAME: Final = 64 * 1024


def encode_message(frames: Sequence[bytes | bytearray | memoryview]) -> list[bytes | memoryview]:
    """Prefix each frame with its length, ready for ``writelines``.

    The frames themselves are not copied: large bodies go to the socket as they are.

    Raises:
        ValueError: No frames, more than ``MAX_FRAMES``, or a frame of 4 GiB or more.
    """
    if not 1 <= len(frames) <= MAX_FRAMES:
        raise ValueError(f"a message has 1..{MAX_FRAMES} frames, got {len(frames)}")
    out: list[bytes | memoryview] = [_COUNT.pack(len(frames))]
    for frame in frames:
        if len(frame) > _MAX_LENGTH:
            raise ValueError(f"a frame must be under 4 GiB, got {len(frame)} bytes")
        out.append(_LENGTH.pack(len(frame)))
        out.append(frame if isinstance(frame, bytes | memoryview) else bytes(frame))
    return out


class FrameEncoder:
    """Frames messages for a byte stream, to be written in one go.

    Small frames are copied into one growing buffer; a frame of ``copy_limit`` bytes or more
    is kept by reference (never copied), between the buffered bytes before and after it.

    Args:
        copy_limit: The size from which frames are not copied, in bytes.
    """

    def __init__(self, copy_limit: int = 16 * 1024) -> None:
        if not 0 < copy_limit <= _MAX_LENGTH:
            raise ValueError(f"copy_limit must be in 1..{_MAX_LENGTH}, got {copy_limit}")
        self._copy_limit = copy_limit
        self._small = bytearray()  # framed bytes after the last large frame
        self._pieces: list[bytes | bytearray | memoryview] = []  # all before ``_small``
        self._size = 0

    def __len__(self) -> int:
        """Bytes queued."""
        return self._size

    def add(self, frames: Sequence[bytes | bytearray | memoryview]) -> int:
        """Queue one message; return the bytes queued now (``len(self)``, without a call).

        Raises:
            ValueError: No frames, more than ``MAX_FRAMES``, or a frame of 4 GiB or more.
        """
        if not 1 <= len(frames) <= MAX_FRAMES:
            raise ValueError(f"a message has 1..{MAX_FRAMES} frames, got {len(frames)}")
        small, limit = self._small, self._copy_limit
        if len(frames) == 2:  # a header and a body, the common case, unrolled
            head, body = frames
            head_size, body_size = len(head), len(body)
            if head_size < limit and body_size < limit:
                small += _HEAD.pack(2, head_size)
                small += head
                small += _LENGTH.pack(body_size)
                small += body
                self._size += _TWO_FRAMES + head_size + body_size
                return self._size
        small += _COUNT.pack(len(frames))
        size = _COUNT.size
        for frame in frames:
            length = len(frame)
            if length > _MAX_LENGTH:
                raise ValueError(f"a frame must be under 4 GiB, got {length} bytes")
            small += _LENGTH.pack(length)
            if length < limit:
                small += frame
            else:
                self._pieces += [small, frame]
                self._small = small = bytearray()
            size += _LENGTH.size + length
        self._size += size
        return self._size

    def data_to_send(self) -> list[bytes | bytearray | memoryview]:
        """Everything queued, in order, for ``writelines`` (often one buffer); then empty."""
        if not self._size:
            return []
        pieces, small = self._pieces, self._small
        self._pieces, self._small, self._size = [], bytearray(), 0
        if small:
            pieces.append(small)
        return pieces


def framed_size(frames: Sequence[bytes | bytearray | memoryview]) -> int:
    """Bytes ``frames`` take in this layout (count, lengths and the frames themselves)."""
    return _COUNT.size + _LENGTH.size * len(frames) + sum(map(len, frames))


class FrameDecoder:
    """Reassembles messages from a byte stream.

    Complete messages are parsed straight out of each chunk (one copy per frame: its slice).
    Only a message that a chunk boundary splits is held, item by item: a partial count or
    length prefix (a few bytes), the frames already complete, and the bytes of the frame in
    progress, which are kept as they arrive (never allocated ahead from a length prefix, so
    an announced length costs nothing until its bytes come). Every frame is handed over as
    ``bytes``. A frame of ``LARGE_FRAME`` bytes or more that spans chunks is held as a list of
    pieces, a chunk that is all frame bytes by reference, and joined once at its end: one
    copy of it in all, and exact ``bytes``, which later joins can do without the GIL.

    Args:
        max_frame_size: The largest frame accepted, in bytes.
    """

    def __init__(self, max_frame_size: int) -> None:
        if max_frame_size <= 0:
            raise ValueError(f"max_frame_size must be positive, got {max_frame_size}")
        self._max_frame_size = max_frame_size
        self._frames: list[Buffer] = []  # the complete frames of the message
        self._remaining = 0  # frames still to read in the current message; 0 = need a count
        self._prefix = bytearray()  # a count or length prefix begun in an earlier chunk
        self._length = -1  # length of the frame whose bytes are being read, -1 = none
        self._body = bytearray()  # the bytes of that frame so far (a small frame)
        self._pieces: list[bytes] = []  # or its pieces so far (a large frame)
        self._have = 0  # bytes of the frame in progress so far

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._prefix) + self._have + sum(len(f) for f in self._frames)

    def feed(self, data: bytes | bytearray | memoryview) -> list[list[Buffer]]:
        """Add bytes; return every message they complete, in order.

        Raises:
            ProtocolError: The stream violates the framing or its limits.
        """
        if type(data) is not bytes:
            data = bytes(data)
        out: list[list[Buffer]] = []
        pos = 0
        if self._remaining or self._prefix:  # finish the message a chunk boundary split
            pos = self._resume(data, pos, out)
        pos = _parse(data, pos, self._max_frame_size, out)  # every complete message
        if pos < len(data):
            self._resume(data, pos, out)
        return out

    def _resume(self, data: bytes, pos: int, out: list[list[Buffer]]) -> int:
        """Read the message in progress item by item, until it is complete or data ends."""
        end = len(data)
        while True:
            if self._length >= 0:  # reading a frame's bytes
                take = min(self._length - self._have, end - pos)
                if self._length < LARGE_FRAME:
                    self._body += memoryview(data)[pos : pos + take]
                elif take:
                    whole = pos == 0 and take == end  # the chunk is all frame: keep it
                    self._pieces.append(data if whole else data[pos : pos + take])
                pos += take
                self._have += take
                if self._have < self._length:
                    return pos
                self._frame_done(out)
                if not self._remaining:
                    return pos
                continue
            prefix = self._prefix
            need = _LENGTH.size if self._remaining else _COUNT.size
            take = min(need - len(prefix), end - pos)
            prefix += data[pos : pos + take]
            pos += take
            if len(prefix) < need:
                return pos
            value = int.from_bytes(prefix, "big")
            prefix.clear()
            self._prefix_done(value)

    def _prefix_done(self, value: int) -> None:
        if not self._remaining:
            if not 1 <= value <= MAX_FRAMES:
                raise ProtocolError(f"frame count {value} not in 1..{MAX_FRAMES}")
            self._remaining = value
        elif value > self._max_frame_size:
            raise ProtocolError(f"frame of {value} bytes exceeds {self._max_frame_size}")
        else:
            self._length = value

    def _frame_done(self, out: list[list[Buffer]]) -> None:
        if self._length < LARGE_FRAME:
            self._frames.append(bytes(self._body))
            self._body.clear()
        else:
            pieces, self._pieces = self._pieces, []
            self._frames.append(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        self._have = 0
        self._length = -1
        self._remaining -= 1
        if not self._remaining:
            out.append(self._frames)
            self._frames = []


def pack_batch(
    messages: Sequence[Sequence[bytes | bytearray | memoryview]], prefix: bytes = b""
) -> bytes:
    """Join messages back to back in this module's layout, for ``split_batch`` to split.

    ``prefix`` goes before them, in the same copy (a transport's own header byte).

    Raises:
        ValueError: A message with no frames or more than ``MAX_FRAMES``, or a frame of
            4 GiB or more.
    """
    pieces: list[bytes | bytearray | memoryview] = [prefix] if prefix else []
    add = pieces.append
    pack_count, pack_length, pack_head = _COUNT.pack, _LENGTH.pack, _HEAD.pack
    for frames in messages:
        if len(frames) == 2:  # a header and a body, the common case, unrolled
            head, body = frames
            head_size, body_size = len(head), len(body)
            if head_size <= _MAX_LENGTH and body_size <= _MAX_LENGTH:
                pieces += (pack_head(2, head_size), head, pack_length(body_size), body)
                continue
        if not 1 <= len(frames) <= MAX_FRAMES:
            raise ValueError(f"a message has 1..{MAX_FRAMES} frames, got {len(frames)}")
        add(pack_count(len(frames)))
        for frame in frames:
            if len(frame) > _MAX_LENGTH:
                raise ValueError(f"a frame must be under 4 GiB, got {len(frame)} bytes")
            add(pack_length(len(frame)))
            add(frame)
    return b"".join(pieces)


def split_batch(data: Buffer, offset: int = 0) -> list[list[Buffer]]:
    """Split a batch (one or more messages in this module's layout, back to back).

    The batch is already in memory, so splitting allocates no more than its size: the caller
    checks its own frame size limit on each message (a message over it costs that message).

    Args:
        data: The whole batch.
        offset: Where the batch starts in ``data`` (after a transport's own header).

    Returns:
        The messages, in order; each frame is a copy (``bytes``).

    Raises:
        ProtocolError: The batch is empty, has a bad frame count, or ends inside a message.
    """
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) <= offset:
        raise ProtocolError("empty batch")
    out: list[list[Buffer]] = []
    pos = _parse(data, offset, _MAX_LENGTH, out)
    if pos < len(data):
        raise ProtocolError(f"batch ends inside a message (at byte {pos} of {len(data)})")
    return out


def _parse(data: bytes, pos: int, limit: int, out: list[list[Buffer]]) -> int:
    """Append every complete message of ``data[pos:]`` to ``out``; return where the rest starts.

    Each frame is a slice of ``data`` (a copy). The hot path of both transports: the count
    and the first length are read at once, each frame's end is checked once, and a message
    of two frames (a header and a body) whose bytes are all here is read without a loop.

    Raises:
        ProtocolError: A frame count out of range, or a frame over ``limit`` bytes.
    """
    end = len(data)
    unpack_head, unpack_length = _HEAD.unpack_from, _LENGTH.unpack_from
    while end - pos >= _HEAD.size:
        count, length = unpack_head(data, pos)
        at = pos + _HEAD.size + length
        if count == 2 and length <= limit and end - at >= _LENGTH.size:
            (size,) = unpack_length(data, at)
            stop = at + _LENGTH.size + size
            if size <= limit and stop <= end:
                out.append([data[at - length : at], data[stop - size : stop]])
                pos = stop
                continue
        stop = _parse_one(data, pos, limit, out)
        if stop < 0:
            return pos
        pos = stop
    return pos


def _parse_one(data: bytes, pos: int, limit: int, out: list[list[Buffer]]) -> int:
    """``_parse`` for one message of any frame count; ``-1`` when it is not all there yet.

    Raises:
        ProtocolError: A frame count out of range, or a frame over ``limit`` bytes.
    """
    end = len(data)
    count, length = _HEAD.unpack_from(data, pos)
    if not 1 <= count <= MAX_FRAMES:
        raise ProtocolError(f"frame count {count} not in 1..{MAX_FRAMES}")
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes exceeds {limit}")
    at: int = pos + _HEAD.size + length
    if at > end:
        return -1
    frames: list[Buffer] = [data[at - length : at]]
    for _ in range(1, count):
        if end - at < _LENGTH.size:
            return -1
        (length,) = _LENGTH.unpack_from(data, at)
        if length > limit:
            raise ProtocolError(f"frame of {length} bytes exceeds {limit}")
        at += _LENGTH.size + length
        if at > end:
            return -1
        frames.append(data[at - length : at])
    out.append(frames)
    return at
