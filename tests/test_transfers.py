"""Chunked-body bookkeeping without sockets: reassembly limits and the sender's window."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import warnings

import pytest

from callosum_like.errors import ProtocolError
from callosum_like.transfers import (
    MAX_OPEN_TRANSFERS,
    OFFLOAD_SIZE,
    OutgoingTransfers,
    Reassembly,
    TransferStopped,
    load_body,
)
from callosum_like.wire import messages as m
from callosum_like.wire.codec import ChunkedHead, OversizeBodyError, pack_body

pytestmark = pytest.mark.timeout(10)


def head(transfer: int, size: int) -> ChunkedHead:
    return ChunkedHead(m.Call(id=transfer, method="echo", body=b""), transfer, size)


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


@pytest.mark.asyncio
async def test_the_sender_waits_for_acks_and_stops_when_refused() -> None:
    outgoing = OutgoingTransfers(window=2)
    transfer = await outgoing.open()
    await outgoing.take(transfer)
    await outgoing.take(transfer)
    third = asyncio.create_task(outgoing.take(transfer))
    await asyncio.sleep(0)
    assert not third.done()  # the window is used up
    assert outgoing.ack(transfer, 1)
    await asyncio.wait_for(third, 1)
    fourth = asyncio.create_task(outgoing.take(transfer))
    await asyncio.sleep(0)
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
    await asyncio.sleep(0)
    outgoing.fail(ConnectionError("gone"))
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(ConnectionError):
        await outgoing.open()


def test_a_reassembled_body_is_its_chunks_as_exact_bytes() -> None:
    incoming = Reassembly(max_body_size=100)
    incoming.begin(head(1, 6))
    source = bytearray(b"abcdef")
    incoming.feed(m.Chunk(transfer=1, body=memoryview(source)[:3]))  # type: ignore[arg-type]
    whole = incoming.feed(m.Chunk(transfer=1, body=b"def"))
    assert isinstance(whole, m.Call)
    assert isinstance(whole.body, m.LargeBody)
    source[:3] = b"XYZ"  # the transport reuses its buffer: the body keeps what arrived
    assert [type(part) for part in whole.body.parts] == [bytes, bytes]
    assert whole.body.joined() == b"abcdef"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "value", [b"q" * (3 * OFFLOAD_SIZE), [b"q" * OFFLOAD_SIZE, "tail"], b"s" * 1000]
)
async def test_load_body_unpacks_what_pack_body_packed(value: object) -> None:
    packed = pack_body(value)
    joined = packed.joined() if isinstance(packed, m.LargeBody) else packed
    third = len(joined) // 3
    received = m.LargeBody([joined[:third], joined[third : 2 * third], joined[2 * third :]])
    assert await load_body(received) == value
    assert await load_body(joined) == value


@pytest.mark.asyncio
async def test_load_body_leaves_the_event_loop_free_while_it_joins_a_large_body() -> None:
    value = b"j" * (32 * OFFLOAD_SIZE)
    received = pack_body(value)
    ticks: list[None] = []

    async def tick() -> None:
        while True:
            ticks.append(None)
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = len(ticks)
    loaded = await load_body(received)
    ticker.cancel()
    # Joined on the loop, the ticker could not have run between the call and its result.
    assert len(ticks) > before
    assert loaded == value


@pytest.mark.asyncio
async def test_load_body_of_garbage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        await load_body(m.LargeBody([b"\xc1" * OFFLOAD_SIZE]))


def test_load_body_works_in_a_child_forked_after_the_parent_used_it() -> None:
    value = b"f" * (2 * OFFLOAD_SIZE)

    def load() -> object:
        return asyncio.run(asyncio.wait_for(load_body(pack_body(value)), 10))

    assert load() == value  # the parent's pool now has worker threads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # the child: the parent's worker threads were not copied
        status = 1
        try:
            status = 0 if load() == value else 1
        finally:
            os._exit(status)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("load_body hung in a forked child")
    assert os.waitstatus_to_exitcode(done[1]) == 0
