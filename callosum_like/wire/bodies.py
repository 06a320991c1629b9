"""Large packed bodies: their bytes kept in a few pieces, never copied whole.

A message that carries an application body keeps it msgpack-packed (``PackedBody``). A large
body is a ``LargeBody``; ``wire.messages`` re-exports both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeAlias

__all__ = ["LargeBody", "PackedBody"]


class LargeBody:
    """A large packed body, kept in pieces so that its ``bytes`` value is never copied whole.

    Joining or slicing megabytes copies them, and a copy of 16 MiB holds the event loop for
    3-10 ms (most of it page faults). So a large ``bytes`` body leaves as
    ``[bin 32 header, the bytes themselves]`` (``codec.pack_body``) and is cut into chunks
    from there; a chunked body arrives in the same shape, its value assembled chunk by chunk
    as it came (``transfers.Reassembly``), or as one piece when it is not one ``bytes``
    value. (Which pieces make a ``bytes`` value is the codec's business:
    ``codec.bin_value_parts``.)

    Args:
        parts: Exact ``bytes`` objects whose concatenation is the packed body; not empty.
    """

    __slots__ = ("_size", "parts")

    def __init__(self, parts: Sequence[bytes]) -> None:
        self.parts = tuple(parts)
        self._size = sum(len(part) for part in self.parts)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<LargeBody of {self._size} bytes in {len(self.parts)} parts>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LargeBody):
            return self.joined() == other.joined()
        if isinstance(other, bytes | bytearray | memoryview):
            return self.joined() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def joined(self) -> bytes:
        """The packed body as one ``bytes`` (a copy of all of it)."""
        return b"".join(self.parts)

    __bytes__ = joined

    def slices(self, size: int | Callable[[], int]) -> Iterator[bytes | memoryview]:
        """The packed body cut into consecutive pieces of ``size`` bytes (the last may be shorter).

        ``size`` may be a function: it is asked for the size of each piece just before that
        piece is cut, so a sender can change its chunk size during a transfer. A piece
        within one part is a view of it (no copy); only a piece that spans two parts is
        copied together.
        """
        next_size: Callable[[], int] = size if callable(size) else lambda: size
        want = next_size()
        carry: list[memoryview] = []  # the start of a piece that spans parts
        carried = 0
        for part in self.parts:
            view = memoryview(part)
            start = 0
            while start < len(view):
                if not carried and len(view) - start >= want:
                    yield view[start : start + want]
                    start += want
                    want = next_size()
                    continue
                take = min(want - carried, len(view) - start)
                carry.append(view[start : start + take])
                carried += take
                start += take
                if carried == want:
                    yield b"".join(carry)
                    carry, carried = [], 0
                    want = next_size()
        if carried:
            yield carry[0] if len(carry) == 1 else b"".join(carry)


#: A packed application body: ``bytes`` (or the ``bytearray``/``memoryview`` a transport
#: received it in), or a ``LargeBody``.
PackedBody: TypeAlias = "bytes | LargeBody"
