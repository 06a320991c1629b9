"""Stream framing on bytes alone: round trips, any chunking, and limits before the bytes.

Like h11's ``tests/test_io.py``, every stream is also fed one byte at a time; the decoder must
produce each message exactly when its last byte arrives, whatever the chunking.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callosum_like.errors import ProtocolError
from callosum_like.wire import messages as m
from callosum_like.wire.codec import decode, encode, pack_body
from callosum_like.wire.framing import (
    LARGE_FRAME,
    MAX_FRAMES,
    FrameDecoder,
    FrameEncoder,
    encode_message,
    framed_size,
    pack_batch,
    split_batch,
)

pytestmark = pytest.mark.timeout(30)

MAX_FRAME = 256

FRAMES = st.lists(st.binary(max_size=MAX_FRAME), min_size=1, max_size=MAX_FRAMES)
STREAMS = st.lists(FRAMES, max_size=6)


def wire(messages: Iterable[Sequence[bytes]]) -> bytes:
    return b"".join(b"".join(encode_message(frames)) for frames in messages)


def largest_message(max_frame_size: int) -> int:
    """Bytes of the largest message the decoder can be asked to hold."""
    return 2 + MAX_FRAMES * (4 + max_frame_size)


def feed_chunks(decoder: FrameDecoder, chunks: Iterable[bytes]) -> list[list[bytes]]:
    """Feed every chunk; between feeds at most one incomplete message may be held."""
    out: list[list[bytes]] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
        assert decoder.buffered < largest_message(MAX_FRAME)
    return out


def test_layout_is_count_then_length_prefixed_frames() -> None:
    data = b"".join(encode_message([b"ab", b"", bytearray(b"c")]))
    assert data == b"\x00\x03" + b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x01c"


def test_encode_message_does_not_copy_bytes_or_memoryviews() -> None:
    body = b"x" * 1000
    view = memoryview(body)
    parts = encode_message([body, view])
    assert parts[2] is body
    assert parts[4] is view


@given(messages=STREAMS)
def test_round_trip(messages: list[list[bytes]]) -> None:
    decoder = FrameDecoder(MAX_FRAME)
    assert decoder.feed(wire(messages)) == messages
    assert decoder.buffered == 0


@given(messages=STREAMS)
def test_one_byte_at_a_time(messages: list[list[bytes]]) -> None:
    """Each message comes out exactly when its last byte goes in, and not before."""
    decoder = FrameDecoder(MAX_FRAME)
    ends: set[int] = set()
    pos = 0
    for frames in messages:
        pos += len(wire([frames]))
        ends.add(pos)
    data = wire(messages)
    out: list[list[bytes]] = []
    for i in range(len(data)):
        got = decoder.feed(data[i : i + 1])
        assert len(got) == (1 if i + 1 in ends else 0)
        out.extend(got)
        assert decoder.buffered < largest_message(MAX_FRAME)
        if i + 1 in ends:
            assert decoder.buffered == 0
    assert out == messages


@given(messages=STREAMS, data=st.data())
def test_any_chunking_gives_the_same_messages(
    messages: list[list[bytes]], data: st.DataObject
) -> None:
    stream = wire(messages)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    kinds = data.draw(st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=1))
    typed = [kinds[i % len(kinds)](chunk) for i, chunk in enumerate(chunks)]
    decoder = FrameDecoder(MAX_FRAME)
    assert feed_chunks(decoder, typed) == messages
    assert decoder.buffered == 0


@given(
    msgs=st.lists(
        st.builds(
            m.Call, id=st.integers(0, 2**64 - 1), method=st.text(), body=st.binary().map(pack_body)
        ),
        max_size=5,
    ),
    step=st.integers(1, 50),
)
def test_codec_messages_survive_framing(msgs: list[m.Call], step: int) -> None:
    stream = b"".join(b"".join(encode_message(encode(msg))) for msg in msgs)
    decoder = FrameDecoder(1 << 20)
    out: list[list[bytes]] = []
    for i in range(0, len(stream), step):
        out.extend(decoder.feed(stream[i : i + step]))
    assert [decode(frames, max_body_size=1 << 20) for frames in out] == msgs


def test_frame_of_exactly_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    frames = [b"x" * MAX_FRAME] * MAX_FRAMES
    assert decoder.feed(wire([frames])) == [frames]


def test_oversize_frame_is_refused_from_its_length_prefix_alone() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    assert decoder.feed(struct.pack("!H", 1)) == []
    assert decoder.feed(struct.pack("!I", MAX_FRAME + 1)[:3]) == []
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(struct.pack("!I", MAX_FRAME + 1)[3:])


@pytest.mark.parametrize("length", [MAX_FRAME + 1, 2**31, 2**32 - 1])
def test_oversize_later_frame_is_refused_before_its_bytes(length: int) -> None:
    decoder = FrameDecoder(MAX_FRAME)
    head = struct.pack("!HI", 2, 3) + b"abc"
    assert decoder.feed(head) == []
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack("!I", length))


@pytest.mark.parametrize("count", [2, 3])
def test_oversize_later_frame_in_the_same_chunk_is_refused(count: int) -> None:
    """Two frames are parsed by a path of their own (the common message): it checks too."""
    decoder = FrameDecoder(MAX_FRAME)
    good = wire([[b"ok"]])
    bad = wire([[b"abc", b"x" * (MAX_FRAME + 1), *[b"y"] * (count - 2)]])
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(good + bad)


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1, 0xFFFF])
def test_bad_frame_count_is_refused_from_the_count_alone(count: int) -> None:
    decoder = FrameDecoder(MAX_FRAME)
    prefix = struct.pack("!H", count)
    assert decoder.feed(prefix[:1]) == []
    with pytest.raises(ProtocolError, match="frame count"):
        decoder.feed(prefix[1:])


def test_bad_count_after_a_good_message_is_refused() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    assert decoder.feed(wire([[b"ok"]])) == [[b"ok"]]
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x00\x00")


def test_a_slow_hostile_stream_stays_bounded() -> None:
    """A maximal message fed one byte at a time never holds more than that message."""
    decoder = FrameDecoder(MAX_FRAME)
    data = wire([[b"y" * MAX_FRAME] * MAX_FRAMES])
    assert len(data) == largest_message(MAX_FRAME)
    peak = 0
    for i in range(len(data) - 1):
        assert decoder.feed(data[i : i + 1]) == []
        peak = max(peak, decoder.buffered)
    assert peak < largest_message(MAX_FRAME)
    assert decoder.feed(data[-1:]) == [[b"y" * MAX_FRAME] * MAX_FRAMES]
    assert decoder.buffered == 0


def test_many_messages_in_one_chunk_leave_nothing_buffered() -> None:
    decoder = FrameDecoder(MAX_FRAME)
    messages = [[i.to_bytes(2, "big")] for i in range(1000)]
    assert decoder.feed(wire(messages) + b"\x00") == messages
    assert decoder.buffered == 1


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1])
def test_encode_message_refuses_bad_frame_counts(count: int) -> None:
    with pytest.raises(ValueError, match="frames"):
        encode_message([b"x"] * count)


@pytest.mark.parametrize("count", [1, MAX_FRAMES])
def test_encode_message_accepts_1_to_max_frames(count: int) -> None:
    decoder = FrameDecoder(MAX_FRAME)
    assert decoder.feed(wire([[b"x"] * count])) == [[b"x"] * count]


@pytest.mark.parametrize("size", [0, -1])
def test_decoder_needs_a_positive_limit(size: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        FrameDecoder(size)


class _FourGiB(bytes):
    """A bytes object that reports 4 GiB, so the check needs no 4 GiB of memory."""

    def __len__(self) -> int:
        return 2**32


def test_encode_message_refuses_a_frame_of_4_gib() -> None:
    with pytest.raises(ValueError, match="frame"):
        encode_message([_FourGiB(b"x")])

    with pytest.raises(ValueError, match="frame"):
        pack_batch([[b"ok"], [_FourGiB(b"x")]])
    with pytest.raises(ValueError, match="4 GiB"):  # the two-frame case has its own path
        pack_batch([[b"ok"], [b"head", _FourGiB(b"x")]])


# -- batches: the same layout in one buffer --------------------------------------------------


@given(messages=STREAMS.filter(bool))
def test_batch_round_trip_is_the_stream_layout(messages: list[list[bytes]]) -> None:
    batch = pack_batch(messages)
    assert batch == wire(messages)
    assert len(batch) == sum(framed_size(frames) for frames in messages)
    assert split_batch(batch) == messages


def test_split_batch_copies_out_of_any_buffer_into_bytes() -> None:
    batch = pack_batch([[b"ab", b""], [b"c"]])
    assert split_batch(batch) == [[b"ab", b""], [b"c"]]
    assert all(type(f) is bytes for frames in split_batch(batch) for f in frames)


@given(messages=STREAMS.filter(bool), data=st.data())
def test_a_truncated_batch_is_refused_whole(
    messages: list[list[bytes]], data: st.DataObject
) -> None:
    batch = pack_batch(messages)
    cut = data.draw(st.integers(0, len(batch) - 1))
    ends = {sum(len(pack_batch([f])) for f in messages[:i]) for i in range(1, len(messages))}
    if cut in ends:  # a cut between two messages is itself a valid, shorter batch
        assert split_batch(batch[:cut]) == messages[: len([e for e in ends if e <= cut])]
    else:
        with pytest.raises(ProtocolError):
            split_batch(batch[:cut])


@pytest.mark.parametrize(
    "batch",
    [
        b"",
        b"\x00",
        b"\x00\x00",
        struct.pack("!H", MAX_FRAMES + 1) + b"\x00\x00\x00\x00" * (MAX_FRAMES + 1),
        struct.pack("!HI", 1, 10) + b"short",
        struct.pack("!HI", 1, 2) + b"ok" + b"\x00\x01\x00\x00",
        struct.pack("!HI", 1, 2**32 - 1) + b"x",
    ],
)
def test_a_bad_batch_is_refused(batch: bytes) -> None:
    with pytest.raises(ProtocolError):
        split_batch(batch)


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1])
def test_pack_batch_refuses_bad_frame_counts(count: int) -> None:
    with pytest.raises(ValueError, match="frames"):
        pack_batch([[b"x"], [b"x"] * count])


def test_the_batch_example_of_protocol_md() -> None:
    batch = pack_batch([[b"\x91\x01", b"\xc0"], [b"ab"]])
    assert batch == bytes.fromhex("0002 00000002 9101 00000001 c0  0001 00000002 6162")
    assert split_batch(batch) == [[b"\x91\x01", b"\xc0"], [b"ab"]]


# -- the encoder: one buffer for small frames, large ones by reference ------------------------


@given(messages=STREAMS, limit=st.integers(1, MAX_FRAME + 1))
def test_encoder_output_is_the_stream_layout(messages: list[list[bytes]], limit: int) -> None:
    encoder = FrameEncoder(copy_limit=limit)
    for frames in messages:
        encoder.add(frames)
    assert len(encoder) == len(wire(messages))
    assert b"".join(encoder.data_to_send()) == wire(messages)
    assert len(encoder) == 0
    assert encoder.data_to_send() == []


def test_encoder_passes_large_frames_through_without_a_copy() -> None:
    big = b"x" * 100
    view = memoryview(b"y" * 200)
    encoder = FrameEncoder(copy_limit=100)
    encoder.add([b"small", big])
    encoder.add([view])
    encoder.add([b"tail"])
    pieces = encoder.data_to_send()
    assert pieces[1] is big
    assert pieces[3] is view
    assert len(pieces) == 5
    assert b"".join(pieces) == wire([[b"small", big], [bytes(view)], [b"tail"]])


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1])
def test_encoder_refuses_bad_frame_counts(count: int) -> None:
    with pytest.raises(ValueError, match="frames"):
        FrameEncoder().add([b"x"] * count)
    with pytest.raises(ValueError, match="frame"):
        FrameEncoder().add([_FourGiB(b"x")])
    with pytest.raises(ValueError, match="4 GiB"):  # the two-frame case has its own path
        FrameEncoder().add([b"head", _FourGiB(b"x")])


@pytest.mark.parametrize("limit", [0, 2**32])
def test_encoder_refuses_a_copy_limit_a_length_prefix_cannot_state(limit: int) -> None:
    with pytest.raises(ValueError, match="copy_limit"):
        FrameEncoder(copy_limit=limit)


# -- the decoder: large frames in pieces, and announced lengths cost nothing ------------------


def test_a_large_frame_assembled_from_pieces_is_handed_over_as_exact_bytes() -> None:
    big = bytes(range(256)) * (LARGE_FRAME // 256 * 3)
    data = wire([[b"h", big], [b"next"]])
    decoder = FrameDecoder(len(big))
    out: list[list[bytes]] = []
    for i in range(0, len(data), 10_000):
        out.extend(decoder.feed(data[i : i + 10_000]))
    assert out == [[b"h", big], [b"next"]]
    assert [type(frame) for frames in out for frame in frames] == [bytes, bytes, bytes]


def test_chunks_that_are_all_frame_bytes_are_kept_not_copied() -> None:
    big = bytes(range(256)) * (LARGE_FRAME // 256 * 2)
    data = wire([[big]])
    head, middle, tail = data[:1000], data[1000:70_000], data[70_000:]
    decoder = FrameDecoder(len(big))
    assert decoder.feed(head) == []
    assert decoder.feed(middle) == []
    assert decoder._pieces[-1] is middle  # noqa: SLF001 (white-box: held by reference until the frame is whole)
    assert decoder.buffered == len(head) - 6 + len(middle)
    assert decoder.feed(tail) == [[big]]
    assert decoder.buffered == 0


def test_a_large_frame_in_one_piece_after_its_prefix_is_that_piece() -> None:
    big = b"q" * LARGE_FRAME
    data = wire([[big]])
    decoder = FrameDecoder(len(big))
    assert decoder.feed(data[:6]) == []
    piece = data[6:]
    [[frame]] = decoder.feed(piece)
    assert frame is piece


def test_a_whole_message_in_one_chunk_gives_bytes() -> None:
    big = b"z" * (2 * LARGE_FRAME)
    [[frame]] = FrameDecoder(len(big)).feed(wire([[big]]))
    assert type(frame) is bytes
    assert frame == big


def test_an_announced_length_holds_no_memory_until_its_bytes_arrive() -> None:
    decoder = FrameDecoder(2**30)
    assert decoder.feed(struct.pack("!HI", 1, 2**30)) == []
    assert decoder.buffered == 0
    assert decoder.feed(b"abc") == []
    assert decoder.buffered == 3
