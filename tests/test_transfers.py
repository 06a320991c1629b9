"""Chunked-body bookkeeping without sockets: reassembly limits and the sender's window."""

from __future__ import annotations

import asyncio
import itertools
import os
import tracemalloc
from typing import cast

import pytest

from callosum_like import transfers
from callosum_like.errors import ProtocolError
from callosum_like.transfers import (
    MAX_OPEN_TRANSFERS,
    OutgoingTransfers,
    Reassembly,
    TransferStopped,
)
from callosum_like.wire import messages as m
from callosum_like.wire.codec import ChunkedHead, OversizeBodyError, pack_body, unpack_body

pytestmark = pytest.mark.timeout(10)


@pytest.fixture(params=["direct", "growing"])
def buffers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Reassemble in the body's own ``bytes`` (CPython) or in a ``BytesIO`` that grows."""
    if request.param == "direct":
        if transfers._make_direct is None:  # noqa: SLF001 (white-box)
            pytest.skip("no direct buffer on this interpreter")
        monkeypatch.setattr(transfers, "DIRECT_BUFFER_SIZE", 1)
    else:
        monkeypatch.setattr(transfers, "DIRECT_BUFFER_SIZE", 1 << 62)
    return str(request.param)


def head(transfer: int, size: int) -> ChunkedHead:
    return ChunkedHead(m.Call(id=transfer, method="echo", body=b""), transfer, size)


@pytest.mark.usefixtures("buffers")
def test_chunks_reassemble_into_the_message_and_buffer_only_what_arrived() -> None:
    incoming = Reassembly(max_body_size=100)
    incoming.begin(head(1, 10))
    assert incoming.feed(m.Chunk(transfer=1, body=b"01234")) is None
    assert incoming.buffered == 5
    whole = incoming.feed(m.Chunk(transfer=1, body=b"56789"))
    assert isinstance(whole, m.Call)
    assert bytes(whole.body) == b"0123456789"
    assert (len(incoming), incoming.buffered) == (0, 0)


def test_an_oversize_head_is_refused_and_its_stray_chunks_ignored_until_aborted() -> None:
    incoming = Reassembly(max_body_size=100)
    with pytest.raises(OversizeBodyError) as refused:
        incoming.begin(head(1, 101))
    assert refused.value.size == 101
    assert incoming.feed(m.Chunk(transfer=1, body=b"x")) is None  # quietly ignored
    incoming.abort(1)
    with pytest.raises(ProtocolError, match="unknown transfer"):
        incoming.feed(m.Chunk(transfer=1, body=b"x"))


@pytest.mark.parametrize(
    ("chunks", "match"),
    [([b"x" * 11], "chunk of 11 bytes"), ([b""], "chunk of 0 bytes")],
)
def test_overrunning_or_empty_chunks_drop_the_transfer(chunks: list[bytes], match: str) -> None:
    incoming = Reassembly(max_body_size=100)
    incoming.begin(head(1, 10))
    with pytest.raises(ProtocolError, match=match):
        for body in chunks:
            incoming.feed(m.Chunk(transfer=1, body=body))
    assert not incoming.expects(1)


def test_open_transfers_are_bounded_and_ids_unique() -> None:
    incoming = Reassembly(max_body_size=100)
    for transfer in range(MAX_OPEN_TRANSFERS):
        incoming.begin(head(transfer, 10))
    with pytest.raises(ProtocolError, match="already open"):
        incoming.begin(head(0, 10))
    with pytest.raises(ProtocolError, match="at once"):
        incoming.begin(head(MAX_OPEN_TRANSFERS, 10))
    with pytest.raises(ProtocolError, match="empty"):
        Reassembly(max_body_size=100).begin(head(1, 0))


async def settle() -> None:
    """Let the tasks just created run until they finish or wait.

    No I/O and no timers are involved: each pass of the loop runs every ready step, so the
    number of passes needed does not depend on the machine's load (``take`` needs one).
    """
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_the_sender_waits_for_acks_and_stops_when_refused() -> None:
    outgoing = OutgoingTransfers(window=2)
    transfer = await outgoing.open()
    await outgoing.take(transfer)
    await outgoing.take(transfer)
    third = asyncio.create_task(outgoing.take(transfer))
    await settle()
    assert not third.done()  # the window is used up
    assert outgoing.ack(transfer, 1)
    await asyncio.wait_for(third, 1)
    fourth = asyncio.create_task(outgoing.take(transfer))
    await settle()
    assert not fourth.done()  # waiting for credit when the refusal comes: it wakes it
    assert outgoing.stop(transfer)
    with pytest.raises(TransferStopped):
        await asyncio.wait_for(fourth, 1)
    outgoing.close(transfer)
    assert outgoing.ack(transfer, 1)  # a late ack of a finished transfer is fine
    assert not outgoing.ack(99, 1)  # one we never opened is not


@pytest.mark.asyncio
async def test_a_lost_link_fails_every_sender_and_every_later_transfer() -> None:
    outgoing = OutgoingTransfers(window=1)
    transfer = await outgoing.open()
    await outgoing.take(transfer)
    waiting = asyncio.create_task(outgoing.take(transfer))
    await settle()
    assert not waiting.done()  # waiting for credit when the link is lost: it wakes it
    outgoing.fail(ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(ConnectionError):
        await outgoing.open()


def reassemble(packed: bytes, cuts: list[int]) -> m.LargeBody:
    """The body that ``packed``, sent in chunks cut at ``cuts``, arrives as."""
    incoming = Reassembly(max_body_size=len(packed))
    incoming.begin(head(1, len(packed)))
    whole = None
    for start, end in itertools.pairwise([0, *cuts, len(packed)]):
        assert whole is None  # only the last chunk completes the message
        whole = incoming.feed(m.Chunk(transfer=1, body=packed[start:end]))
    assert isinstance(whole, m.Call)
    assert isinstance(whole.body, m.LargeBody)
    return whole.body


@pytest.mark.usefixtures("buffers")
def test_a_reassembled_body_keeps_what_arrived_when_the_transport_reuses_its_buffer() -> None:
    incoming = Reassembly(max_body_size=100)
    incoming.begin(head(1, 6))
    source = bytearray(b"abcdef")
    incoming.feed(m.Chunk(transfer=1, body=memoryview(source)[:3]))  # type: ignore[arg-type]
    whole = incoming.feed(m.Chunk(transfer=1, body=b"def"))
    assert isinstance(whole, m.Call)
    assert isinstance(whole.body, m.LargeBody)
    source[:3] = b"XYZ"  # the transport reuses its buffer: the body keeps what arrived
    assert [type(part) for part in whole.body.parts] == [bytes]
    assert whole.body.joined() == b"abcdef"


@pytest.mark.usefixtures("buffers")
def test_a_reassembled_bytes_value_reaches_the_application_without_another_copy() -> None:
    value = os.urandom(300_000)
    packed = cast(m.LargeBody, pack_body(value)).joined()
    body = reassemble(packed, [65_536, 131_072, 262_144])
    header, assembled = body.parts
    assert header == packed[:5]
    assert assembled == value
    assert unpack_body(body) is assembled  # the buffer itself, not a join of it


@pytest.mark.usefixtures("buffers")
@pytest.mark.parametrize(
    ("value", "cuts"),
    [
        ([b"q" * 100_000, "tail"], [7, 50_000]),
        ({"k": b"v" * 100_000, "n": 1}, [1, 2, 3]),
        (b"h" * 100_000, [3, 4]),  # the bin 32 header split over two chunks
    ],
)
def test_a_reassembled_body_of_any_shape_unpacks_to_its_value(
    value: object, cuts: list[int]
) -> None:
    packed = pack_body(value)
    data = packed.joined() if isinstance(packed, m.LargeBody) else packed
    assert unpack_body(reassemble(data, cuts)) == value


@pytest.mark.usefixtures("buffers")
def test_a_reassembled_body_that_is_not_msgpack_is_a_protocol_error() -> None:
    body = reassemble(b"\xc1" * 200_000, [100_000])
    with pytest.raises(ProtocolError):
        unpack_body(body)


def announce_and_start(announced: int, chunk: bytes) -> Reassembly:
    """Open every transfer a link may have with a body of ``announced`` bytes; send a chunk."""
    incoming = Reassembly(max_body_size=announced)
    for transfer in range(1, MAX_OPEN_TRANSFERS + 1):
        incoming.begin(head(transfer, announced))
        incoming.feed(m.Chunk(transfer=transfer, body=chunk))
    assert incoming.buffered == MAX_OPEN_TRANSFERS * len(chunk)
    return incoming


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.usefixtures("buffers")
def test_an_announced_body_takes_memory_only_as_its_bytes_arrive() -> None:
    # What the system commits (resident memory): 16 bodies of 64 MiB announced (1 GiB)
    # and 256 KiB of each arrived. The direct buffer reserves each body whole but writes
    # only the pages that arrived; the growing one is at most twice what arrived.
    announced, chunk = 64 << 20, b"\xc1" * (256 << 10)
    before = resident_bytes()
    incoming = announce_and_start(announced, chunk)
    grown = resident_bytes() - before
    assert grown < MAX_OPEN_TRANSFERS * 3 * len(chunk) + (8 << 20)  # 12 MiB, plus slack
    del incoming


def test_a_growing_buffer_allocates_at_most_twice_what_arrived(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transfers, "DIRECT_BUFFER_SIZE", 1 << 62)
    chunk = b"\xc1" * (64 << 10)
    tracemalloc.start()
    try:
        announce_and_start(64 << 20, chunk)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < MAX_OPEN_TRANSFERS * 3 * len(chunk)
