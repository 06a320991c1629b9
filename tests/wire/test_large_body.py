"""``LargeBody``: a large packed body kept in pieces, on its own (no sockets, no loop).

Large ``bytes`` bodies are packed without copying them and cut into chunks from their
pieces; a received body is its chunks. These tests pin down that the pieces always mean the
same bytes as the plain packing would, whatever the cut.
"""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callosum_like.wire import messages as m
from callosum_like.wire.codec import bin_value_parts, decode, encode, pack_body, unpack_body

pytestmark = pytest.mark.timeout(30)


def test_a_large_bytes_body_is_packed_without_copying_it() -> None:
    value = bytes(range(256)) * 400  # 100 KiB, over the 64 KiB threshold
    packed = pack_body(value)
    assert isinstance(packed, m.LargeBody)
    assert packed.parts[1] is value  # the caller's object, not a copy
    assert packed.joined() == msgpack.packb(value, use_bin_type=True)
    assert len(packed) == len(value) + 5
    assert unpack_body(packed) == value


def test_small_and_non_bytes_bodies_stay_plain_bytes() -> None:
    for value in (b"x" * 1000, "a" * 100_000, [b"x" * 100_000], bytearray(100_000)):
        packed = pack_body(value)
        assert type(packed) is bytes
        assert msgpack.unpackb(packed) == value


def test_bin_value_parts_is_the_value_only_for_exactly_one_bin_value() -> None:
    value = b"v" * 70_000
    packed = pack_body(value)
    assert isinstance(packed, m.LargeBody)
    assert b"".join(bin_value_parts(packed) or []) == value
    # The header split over two parts (chunks under 5 bytes): not recognised, yet unpacked.
    joined = packed.joined()
    split = m.LargeBody([joined[:3], joined[3:]])
    assert bin_value_parts(split) is None
    assert unpack_body(split) == value
    # A list holding the bytes, a bin whose length disagrees, a non-bin first byte.
    wrapped = msgpack.packb([value], use_bin_type=True)
    assert bin_value_parts(m.LargeBody([wrapped])) is None
    assert bin_value_parts(m.LargeBody([joined, b"extra"])) is None
    assert bin_value_parts(m.LargeBody([b"\xc0"])) is None
    assert unpack_body(m.LargeBody([wrapped[:10], wrapped[10:]])) == [value]


def test_bin_value_parts_when_the_header_is_a_part_of_its_own() -> None:
    value = b"w" * 70_000
    body = m.LargeBody([b"\xc6" + len(value).to_bytes(4, "big"), value])
    assert bin_value_parts(body) == [value]


@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    step=st.integers(1, 60),
)
def test_slices_cut_the_joined_body_at_every_step(sizes: list[int], step: int) -> None:
    parts = [bytes([i]) * size for i, size in enumerate(sizes)]
    body = m.LargeBody(parts)
    joined = body.joined()
    pieces = [bytes(piece) for piece in body.slices(step)]
    assert pieces == [joined[i : i + step] for i in range(0, len(joined), step)]


@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    steps=st.lists(st.integers(1, 60), min_size=1, max_size=10),
)
def test_slices_take_a_new_size_for_every_piece(sizes: list[int], steps: list[int]) -> None:
    parts = [bytes([i]) * size for i, size in enumerate(sizes)]
    body = m.LargeBody(parts)
    asked = itertools.cycle(steps)
    cut: list[int] = []

    def next_size() -> int:
        cut.append(next(asked))
        return cut[-1]

    pieces = [bytes(piece) for piece in body.slices(next_size)]
    assert b"".join(pieces) == body.joined()
    assert [len(piece) for piece in pieces[:-1]] == cut[: len(pieces) - 1]
    assert 0 < len(pieces[-1]) <= cut[len(pieces) - 1]


def test_slices_within_one_part_are_views_not_copies() -> None:
    value = b"z" * 1000
    body = m.LargeBody([b"\xc6" + len(value).to_bytes(4, "big"), value])
    pieces = list(body.slices(100))
    assert type(pieces[0]) is bytes  # header and the first 95 bytes: joined
    assert all(type(piece) is memoryview for piece in pieces[1:])
    assert all(piece.obj is value for piece in pieces[1:])  # type: ignore[union-attr]


def test_a_large_body_encodes_like_its_joined_bytes() -> None:
    value = bytes(range(256)) * 300
    large = m.Result(id=7, body=pack_body(value))
    plain = m.Result(id=7, body=msgpack.packb(value, use_bin_type=True))
    assert encode(large) == encode(plain)
    decoded = decode(encode(large), max_body_size=1 << 20)
    assert decoded == large  # LargeBody compares equal to the bytes it stands for
    assert isinstance(decoded, m.Result)
    assert unpack_body(decoded.body) == value


def test_equality_and_no_hash() -> None:
    body = m.LargeBody([b"ab", b"cd"])
    assert body == m.LargeBody([b"a", b"bcd"])
    assert body == b"abcd"
    assert b"abcd" == body  # noqa: SIM300 (the reflected comparison is the point)
    assert body != b"abce"
    assert body != 42
    assert bytes(body) == b"abcd"
    with pytest.raises(TypeError):
        hash(body)
