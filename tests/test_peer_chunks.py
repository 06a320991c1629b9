"""Chunked bodies over real sockets on both transports.

Boundaries (bodies around the chunk size), interleaving (small calls answered while a large
body is in flight), early refusal of an oversize chunked body, a caller giving up halfway,
a remote dying halfway, and ordering of calls whose bodies are chunked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.errors import ErrorCode
from callosum_like.link import BULK_CHUNKS, SHARED_SPAN
from callosum_like.wire import messages as m
from callosum_like.wire.codec import ChunkedHead, encode_head, pack_body

from .conftest import PairFactory, bind_address, connect_address
from .rawpeer import RawClient

pytestmark = pytest.mark.timeout(60)

CHUNK = 1024
#: A bytes body of n bytes packs to n + 3 bytes when 256 <= n < 65536 (msgpack bin 16).
BIN16_OVERHEAD = 3


async def echo(request: cl.Request) -> Any:
    return request.body


def packed_size_body(size: int) -> bytes:
    """A bytes body whose packed form is exactly ``size`` bytes."""
    body = os.urandom(size - BIN16_OVERHEAD)
    assert len(pack_body(body)) == size
    return body


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "packed_size",
    [300, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1, 37 * CHUNK + 5],
)
async def test_bodies_round_the_chunk_size_arrive_whole(
    make_pair: PairFactory, packed_size: int
) -> None:
    server, client = await make_pair(chunk_size=CHUNK, client={"chunk_size": CHUNK})
    server.handle_function("echo", echo)
    body = packed_size_body(packed_size)
    assert await client.invoke("echo", body) == body
    # And the other way round: the bound side calls the connecting side.
    client.handle_function("echo", echo)
    assert await server.invoke("echo", body) == body


@pytest.mark.asyncio
@pytest.mark.parametrize("body", [None, b"", "x", list(range(1000)), {"k": b"v" * 5000}])
async def test_any_value_survives_chunking(make_pair: PairFactory, body: Any) -> None:
    server, client = await make_pair(chunk_size=CHUNK, client={"chunk_size": CHUNK})
    server.handle_function("echo", echo)
    assert await client.invoke("echo", body) == body


@pytest.mark.asyncio
async def test_compressible_bodies_are_chunked_and_compressed(make_pair: PairFactory) -> None:
    # Chunks of at least codec.COMPRESS_THRESHOLD bytes are compressed one by one.
    server, client = await make_pair(chunk_size=16 * CHUNK, client={"chunk_size": 16 * CHUNK})
    server.handle_function("echo", echo)
    body = b"abcd" * 50_000
    before = client.statistics().bytes_out
    assert await client.invoke("echo", body) == body
    assert client.statistics().bytes_out - before < len(body) // 4


@pytest.mark.asyncio
async def test_stream_items_larger_than_a_chunk(make_pair: PairFactory) -> None:
    items = [os.urandom(n) for n in (10, CHUNK * 3, CHUNK + 1, 5)]

    async def produce(request: cl.Request) -> Any:
        for item in items:
            yield item

    server, client = await make_pair(chunk_size=CHUNK, client={"chunk_size": CHUNK})
    server.handle_function("produce", produce)
    assert [item async for item in client.stream("produce")] == items


@pytest.mark.asyncio
async def test_small_calls_are_answered_while_a_large_body_is_in_flight(
    make_pair: PairFactory,
) -> None:
    server, client = await make_pair()
    server.handle_function("echo", echo)
    big = os.urandom(16 * 2**20)
    done_while_big_in_flight = 0
    big_call = asyncio.create_task(client.invoke("echo", big))
    await asyncio.sleep(0)  # the big call starts sending
    while not big_call.done():
        assert await client.invoke("echo", b"small") == b"small"
        if not big_call.done():
            done_while_big_in_flight += 1
    assert await big_call == big
    # Unchunked, the first small call would wait for the whole 16 MiB in both directions.
    assert done_while_big_in_flight >= 3


@pytest.mark.asyncio
async def test_serialized_calls_run_in_call_order_whatever_their_size(
    make_pair: PairFactory,
) -> None:
    started: list[int] = []

    async def record(request: cl.Request) -> int:
        started.append(request.body[0])
        return len(started)

    server, client = await make_pair(
        ordering=cl.Ordering.SERIALIZED, chunk_size=CHUNK, client={"chunk_size": CHUNK}
    )
    server.handle_function("record", record)
    sizes = [50 * CHUNK, 10, 20 * CHUNK, 10, 10]
    calls = [
        client.invoke("record", [number, b"x" * size], order_key="k")
        for number, size in enumerate(sizes)
    ]
    await asyncio.gather(*calls)
    assert started == list(range(len(sizes)))


@pytest.mark.asyncio
async def test_a_timeout_while_sending_forgets_the_partial_body(make_pair: PairFactory) -> None:
    ran: list[int] = []

    async def count(request: cl.Request) -> None:
        ran.append(len(request.body))

    # 2,000 chunks cannot go out within a millisecond: the call times out while sending.
    server, client = await make_pair(chunk_size=CHUNK, client={"chunk_size": CHUNK})
    server.handle_function("count", count)
    with pytest.raises(cl.RPCTimeoutError):
        await client.invoke("count", os.urandom(2000 * CHUNK), timeout=0.001)
    assert await client.invoke("count", b"ok") is None  # the link still works
    link, _ = server.lookup("agent-1") or pytest.fail("agent-1 is not connected")
    async with asyncio.timeout(10):
        while len(link.incoming):
            await asyncio.sleep(0.01)
    assert ran == [len(b"ok")]


@pytest.mark.asyncio
async def test_remote_dying_mid_transfer_fails_the_call(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), chunk_size=CHUNK)
    )
    client = await peers.enter_async_context(
        cl.Peer(connect=connect_address(server), chunk_size=CHUNK, **_fast_heartbeat())
    )

    async def never(request: cl.Request) -> None:
        raise AssertionError("the body cannot have arrived whole")

    server.handle_function("never", never)
    body = os.urandom(60_000 * CHUNK // 10)
    before = server.statistics().bytes_in
    call = asyncio.create_task(client.invoke("never", body))
    try:
        # The transfer is under way: the server has received many chunks' worth of bytes (a
        # chunked call's head carries none of the body), and not the whole body.
        async with asyncio.timeout(10):
            while server.statistics().bytes_in - before < 10 * CHUNK:
                await asyncio.sleep(0.001)
        assert not call.done()
        received = server.statistics().bytes_in - before
        await server.aclose()
        assert received < len(body), "the transfer was over before the remote went away"
        with pytest.raises(cl.PeerDisconnectedError):
            async with asyncio.timeout(15):
                await call
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)


def _fast_heartbeat() -> dict[str, float]:
    return {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}


# -- a hostile or oversize sender, by hand -------------------------------------------------


@pytest.mark.asyncio
async def test_an_oversize_chunked_call_is_refused_before_any_chunk(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), max_body_size=10 * CHUNK)
    )
    server.handle_function("echo", echo)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake()
        call = m.Call(id=1, method="echo", body=b"\x00" * (11 * CHUNK))
        await raw.conn.send(encode_head(call, transfer=5))
        replies = {type(msg): msg for msg in [await raw.receive(), await raw.receive()]}
        assert replies[m.ChunkStop] == m.ChunkStop(transfer=5, reason="body exceeds max_body_size")
        error = replies[m.Error]
        assert isinstance(error, m.Error)
        assert (error.id, error.code) == (1, ErrorCode.MESSAGE_TOO_LARGE)
        # Chunks already on their way are ignored quietly, and the link keeps working.
        await raw.send(m.Chunk(transfer=5, body=b"\x00" * CHUNK))
        await raw.send(m.ChunkAbort(transfer=5))
        await raw.send(m.Call(id=2, method="echo", body=pack_body("still here")))
        assert await raw.receive() == m.Result(id=2, body=pack_body("still here"))
        assert server.statistics().dropped_messages == 1  # the oversize call only
    finally:
        await raw.aclose()


@pytest.mark.asyncio
async def test_chunks_past_the_announced_size_are_refused(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await peers.enter_async_context(cl.Peer(bind=bind_address(transport_kind)))
    server.handle_function("echo", echo)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake()
        body = pack_body(b"x" * 2000)
        await raw.conn.send(encode_head(m.Call(id=1, method="echo", body=body), transfer=9))
        await raw.send(m.Chunk(transfer=9, body=body[:1000]))
        assert await raw.receive() == m.ChunkAck(transfer=9, amount=1)
        await raw.send(m.Chunk(transfer=9, body=body[1000:] + b"extra"))
        assert await raw.receive() == m.ChunkStop(transfer=9, reason="bad chunk")
        await raw.send(m.Chunk(transfer=77, body=b"stray"))
        await raw.send(m.Call(id=2, method="echo", body=pack_body("ok")))
        assert await raw.receive() == m.ChunkStop(transfer=77, reason="bad chunk")
        assert await raw.receive() == m.Result(id=2, body=pack_body("ok"))
        assert server.statistics().dropped_messages == 2
        link, _ = server.lookup("raw") or pytest.fail("raw is not connected")
        assert not link.incoming.buffered
    finally:
        await raw.aclose()


@pytest.mark.asyncio
async def test_a_chunked_call_by_hand_is_served(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    """The wire format of docs/PROTOCOL.md, spoken by hand, reaches the handler."""
    server = await peers.enter_async_context(cl.Peer(bind=bind_address(transport_kind)))
    server.handle_function("echo", echo)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake()
        body = pack_body("hi" * 100)
        await raw.conn.send(encode_head(m.Call(id=3, method="echo", body=body), transfer=1))
        for start in range(0, len(body), 64):
            await raw.send(m.Chunk(transfer=1, body=body[start : start + 64]))
        acks = [await raw.receive() for _ in range(64, len(body), 64)]  # not the last one
        assert set(acks) == {m.ChunkAck(transfer=1, amount=1)}
        assert await raw.receive() == m.Result(id=3, body=body)
    finally:
        await raw.aclose()


async def download_chunk_sizes(raw: RawClient, *, chatter: bool) -> list[int]:
    """Call ``download`` by hand and take its chunked result, acking every chunk.

    With ``chatter``, a small call goes out before the download and after every chunk, as
    small calls do beside a large body; their results are taken as they come.
    """
    if chatter:
        await raw.send(m.Call(id=1, method="echo", body=pack_body("small")))
    await raw.send(m.Call(id=2, method="download", body=pack_body(None)))
    sizes: list[int] = []
    head = None
    calls = itertools.count(3)
    while head is None or sum(sizes) < head.size:
        msg = await raw.receive_any()
        if isinstance(msg, ChunkedHead):
            head = msg
        elif isinstance(msg, m.Chunk):
            assert head is not None
            sizes.append(len(msg.body))
            await raw.send(m.ChunkAck(transfer=head.transfer, amount=1))
            if chatter:
                await raw.send(m.Call(id=next(calls), method="echo", body=pack_body("small")))
        else:
            assert isinstance(msg, m.Result), msg  # a small call's
    return sizes


@pytest.mark.asyncio
@pytest.mark.parametrize("chatter", [False, True], ids=["quiet", "shared"])
async def test_chunks_are_larger_while_nothing_else_uses_the_link(
    transport_kind: str, peers: contextlib.AsyncExitStack, chatter: bool
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), chunk_size=CHUNK)
    )
    server.handle_function("echo", echo)

    async def download(request: cl.Request) -> bytes:
        return os.urandom(40 * CHUNK)

    server.handle_function("download", download)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake()
        await asyncio.sleep(2 * SHARED_SPAN)  # the handshake does not count as chatter
        sizes = await download_chunk_sizes(raw, chatter=chatter)
    finally:
        await raw.aclose()
    assert sum(sizes) == len(pack_body(os.urandom(40 * CHUNK)))
    expected = CHUNK if chatter else BULK_CHUNKS * CHUNK
    assert set(sizes[:-1]) == {expected}


def test_chunk_size_is_checked() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        cl.Peer(bind="tcp://127.0.0.1:0", chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        cl.Peer(bind="tcp://127.0.0.1:0", chunk_size=1.5)  # type: ignore[arg-type]
