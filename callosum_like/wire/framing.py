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
from typing import Final

from ..errors import ProtocolError

__all__ = [
    "MAX_FRAMES",
    "encode_message",
    "framed_size",
    "FrameDecoder",
    "pack_batch",
    "split_batch",
]

#: Our messages have 1 or 2 frames; 16 leaves room for extensions and bounds the header work.
MAX_FRAMES: Final = 16

_COUNT = struct.Struct("!H")
_LENGTH = struct.Struct("!I")
#: The largest length a u32 prefix can state: frames must be under 4 GiB.
_MAX_LENGTH: Final = 2**32 - 1


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


def framed_size(frames: Sequence[bytes | bytearray | memoryview]) -> int:
    """Bytes ``frames`` take in this layout (count, lengths and the frames themselves)."""
    return _COUNT.size + _LENGTH.size * len(frames) + sum(map(len, frames))


class FrameDecoder:
    """Reassembles messages from a byte stream.

    Args:
        max_frame_size: The largest frame accepted, in bytes.
    """

    def __init__(self, max_frame_size: int) -> None:
        if max_frame_size <= 0:
            raise ValueError(f"max_frame_size must be positive, got {max_frame_size}")
        self._max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._frames: list[bytes] = []
        self._remaining = 0  # frames still to read in the current message; 0 = need a count

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buffer) + sum(len(f) for f in self._frames)

    def feed(self, data: bytes | bytearray | memoryview) -> list[list[bytes]]:
        """Add bytes; return every message they complete, in order.

        Raises:
            ProtocolError: The stream violates the framing or its limits.
        """
        buf = self._buffer
        buf += data
        out: list[list[bytes]] = []
        pos = 0
        while True:
            if self._remaining == 0:
                if len(buf) - pos < _COUNT.size:
                    break
                (count,) = _COUNT.unpack_from(buf, pos)
                if not 1 <= count <= MAX_FRAMES:
                    raise ProtocolError(f"frame count {count} not in 1..{MAX_FRAMES}")
                pos += _COUNT.size
                self._remaining = count
            if len(buf) - pos < _LENGTH.size:
                break
            (length,) = _LENGTH.unpack_from(buf, pos)
            if length > self._max_frame_size:
                raise ProtocolError(f"frame of {length} bytes exceeds {self._max_frame_size}")
            end = pos + _LENGTH.size + length
            if len(buf) < end:
                break
            self._frames.append(bytes(buf[pos + _LENGTH.size : end]))
            pos = end
            self._remaining -= 1
            if self._remaining == 0:
                out.append(self._frames)
                self._frames = []
        del buf[:pos]
        return out


def pack_batch(messages: Sequence[Sequence[bytes | bytearray | memoryview]]) -> bytes:
    """Join messages back to back in this module's layout, for ``split_batch`` to split.

    Raises:
        ValueError: A message with no frames or more than ``MAX_FRAMES``, or a frame of
            4 GiB or more.
    """
    pieces: list[bytes | bytearray | memoryview] = []
    add = pieces.append
    pack_count, pack_length = _COUNT.pack, _LENGTH.pack
    for frames in messages:
        if not 1 <= len(frames) <= MAX_FRAMES:
            raise ValueError(f"a message has 1..{MAX_FRAMES} frames, got {len(frames)}")
        add(pack_count(len(frames)))
        for frame in frames:
            if len(frame) > _MAX_LENGTH:
                raise ValueError(f"a frame must be under 4 GiB, got {len(frame)} bytes")
            add(pack_length(len(frame)))
            add(frame)
    return b"".join(pieces)


def split_batch(data: bytes) -> list[list[bytes]]:
    """Split a batch (one or more messages in this module's layout, back to back).

    The batch is already in memory, so splitting allocates no more than its size: the caller
    checks its own frame size limit on each message (a message over it costs that message).

    Args:
        data: The whole batch.

    Returns:
        The messages, in order; each frame is a copy (``bytes``).

    Raises:
        ProtocolError: The batch is empty, has a bad frame count, or ends inside a message.
    """
    end_all = len(data)
    if not end_all:
        raise ProtocolError("empty batch")
    unpack_count, unpack_length = _COUNT.unpack_from, _LENGTH.unpack_from
    out: list[list[bytes]] = []
    pos = 0
    while pos < end_all:
        if end_all - pos < _COUNT.size:
            raise ProtocolError("batch ends inside a frame count")
        (count,) = unpack_count(data, pos)
        if not 1 <= count <= MAX_FRAMES:
            raise ProtocolError(f"frame count {count} not in 1..{MAX_FRAMES}")
        pos += _COUNT.size
        frames: list[bytes] = []
        for _ in range(count):
            if end_all - pos < _LENGTH.size:
                raise ProtocolError("batch ends inside a frame length")
            (length,) = unpack_length(data, pos)
            pos += _LENGTH.size
            end = pos + length
            if end > end_all:
                raise ProtocolError("batch ends inside a frame")
            frames.append(data[pos:end])
            pos = end
        out.append(frames)
    return out
