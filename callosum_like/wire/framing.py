"""Length-prefixed framing of multi-frame messages over a byte stream, with no I/O.

Theory of operation: the TCP transport (and any other stream transport) sends a message as

    u16 frame count | for each frame: u32 length | length bytes      (all big-endian)

``FrameDecoder.feed`` takes whatever bytes arrived (one byte at a time is fine) and returns
the complete messages. It never buffers more than one incomplete message, and it refuses
(``ProtocolError``) a frame count over ``MAX_FRAMES`` or a frame over ``max_frame_size``
*before* reading its bytes, so a hostile stream cannot make it allocate without bound. After
an error the stream is out of sync; the transport must close the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from ..errors import ProtocolError

__all__ = ["MAX_FRAMES", "encode_message", "FrameDecoder"]

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
