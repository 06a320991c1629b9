"""Chunked-body bookkeeping without sockets: reassembly limits and the sender's window."""

from __future__ import annotations

import asyncio

import pytest

from callosum_like.errors import ProtocolError
from callosum_like.transfers import (
    MAX_OPEN_TRANSFERS,
    OutgoingTransfers,
    Reassembly,
    TransferStopped,
)
from callosum_like.wire import messages as m
from callosum_like.wire.codec import ChunkedHead, OversizeBodyError

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
