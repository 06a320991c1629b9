"""Overload: floods are refused with ``OverloadedError``; slow consumers are dropped.

Memory is measured with tracemalloc around the flood (the flooding raw client runs in this
process too, so the bound covers both; an unbounded queue of requests would be tens of
megabytes). ZeroMQ's own buffers are C memory that tracemalloc does not see: where they are
what grows (a remote that stops reading), the bound is on the process's resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.errors import ErrorCode
from callosum_like.lower.base import Received
from callosum_like.wire import messages as m
from callosum_like.wire.codec import decode, encode, pack_body

from .conftest import (
    PROXY_TRANSPORTS,
    PairFactory,
    QUICTestTransport,
    bind_address,
    connect_address,
)
from .rawpeer import MAX, RawClient, gated_echo

pytestmark = pytest.mark.timeout(60)
FLOOD = 6_000
MAX_PENDING = 64


async def echo(request: cl.Request) -> Any:
    return request.body


async def send_calls(raw: RawClient, count: int | None, method: str, body: bytes) -> None:
    """Send ``count`` calls as fast as the transport takes them (``None``: for ever)."""
    packed = pack_body(body)
    for number in itertools.count(1) if count is None else range(1, count + 1):
        await raw.conn.send(encode(m.Call(id=number, method=method, body=packed)))
        if number % 500 == 0:
            await asyncio.sleep(0)  # let the server run, as a remote process would


async def replies(raw: RawClient, count: int) -> list[m.Message]:
    got: list[m.Message] = []
    async with asyncio.timeout(30):
        while len(got) < count:
            event = await raw.conn.receive()
            if isinstance(event, Received):
                msg = decode(event.frames, max_body_size=MAX)
                if not isinstance(msg, m.Ping | m.Pong):  # heartbeats of a slow run
                    got.append(msg)  # type: ignore[arg-type]
    return got


@contextlib.contextmanager
def peak_memory() -> Any:
    """Yield a callable that returns the peak traced memory since entering, in bytes."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        yield lambda: tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def resident_memory() -> int:
    """This process's resident set size, in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.contextmanager
def peak_resident_memory() -> Iterator[Callable[[], int]]:
    """Yield a callable that returns the peak growth of the resident memory since entering,
    in bytes; a thread samples it every 2 ms, so a busy event loop cannot skip a peak."""
    start = peak = resident_memory()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, resident_memory())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak - start
    finally:
        stop.set()
        sampler.join()


@pytest.mark.asyncio
async def test_a_flood_is_refused_at_once_and_memory_stays_bounded(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), max_concurrency=4, max_pending=MAX_PENDING)
    )
    wait, gate = gated_echo()
    server.handle_function("wait", wait)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake()
        with peak_memory() as peak:
            reader = asyncio.create_task(replies(raw, FLOOD - MAX_PENDING))
            await send_calls(raw, FLOOD, "wait", b"x" * 32)
            refused = await reader
            grown = peak()
        assert {(type(r), r.code) for r in refused} == {(m.Error, ErrorCode.OVERLOADED)}  # type: ignore[attr-defined]
        stats = server.statistics()
        assert stats.requests_in_flight == MAX_PENDING
        assert stats.requests_refused == FLOOD - MAX_PENDING
        assert stats.request_errors["OverloadedError"] == FLOOD - MAX_PENDING
        # Holding 6,000 requests would take about 25 MB; refusing them takes next to none.
        assert grown < 12 * 2**20, f"peak {grown} bytes"
        gate.set()
        results = await replies(raw, MAX_PENDING)
        assert {type(r) for r in results} == {m.Result}
    finally:
        await raw.aclose()


@pytest.mark.asyncio
async def test_callers_tell_overload_apart_and_may_retry(make_pair: PairFactory) -> None:
    server, client = await make_pair(max_concurrency=1, max_pending=1)
    release = asyncio.Event()

    async def hold(request: cl.Request) -> Any:
        await release.wait()

    server.handle_function("hold", hold)
    server.handle_function("echo", echo)
    held = asyncio.create_task(client.invoke("hold"))
    async with asyncio.timeout(5):
        while not server.statistics().requests_in_flight:
            await asyncio.sleep(0.01)
    with pytest.raises(cl.OverloadedError) as refused:
        await client.invoke("echo", 1)
    assert isinstance(refused.value, cl.RemoteError)
    assert "max_pending" in str(refused.value)
    release.set()
    await held
    assert await client.invoke("echo", 2) == 2  # nothing of the refused call ran: retry


def slow_consumer_server(kind: str) -> cl.Peer:
    """A server that drops a remote reading nothing for half a second (TCP), with a full
    pipe (ZeroMQ, which never waits), or with 256 KiB unacknowledged (QUIC)."""
    transport: cl.Transport | None = None
    if kind == "tcp":
        transport = cl.TCPTransport(slow_remote_timeout=0.5)
    elif kind == "quic":  # the remote's flow control holds our replies back
        transport = QUICTestTransport(max_unsent_size=2**18)
    return cl.Peer(bind=bind_address(kind), transport=transport, max_pending=MAX_PENDING)


async def keep_calling(client: cl.Peer, until: Callable[[], bool]) -> int:
    """Call until ``until()``; return how many calls were served. The flood shares
    ``max_pending`` with us, so a call may be refused as overloaded: then retry."""
    served = 0
    while not until():
        with contextlib.suppress(cl.OverloadedError):
            assert await client.invoke("echo", served, timeout=10) == served
            served += 1
        await asyncio.sleep(0.01)
    return served


#: What a remote that reads nothing may make us hold before it is dropped. TCP: the bytes
#: Python holds (tracemalloc), past the 4 MiB high-water mark for at most
#: slow_remote_timeout. ZeroMQ: the process's resident memory, where libzmq's pipes are; they
#: hold HIGH_WATER_MARK batches of at most 16 KiB, about 32 MiB, each way (the flooding
#: client's receiving pipe is in this process too): 64 MiB and room for the rest. A pipe
#: ten times deeper grows it by over 300 MiB.
SLOW_REMOTE_MEMORY = {"tcp": 32 * 2**20, "quic": 32 * 2**20, "zeromq": 96 * 2**20}
HAVE_PROC = os.path.exists("/proc/self/status")


# Socket buffers, and QUIC's flow control (its receive credit follows what the Peer takes).
# NATS's slow consumers: tests/test_nats_faults.py.
@pytest.mark.transports(*PROXY_TRANSPORTS, "quic")
@pytest.mark.asyncio
async def test_a_client_that_never_reads_is_dropped_and_others_are_served(
    transport_kind: str, peers: contextlib.AsyncExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    bound = SLOW_REMOTE_MEMORY[transport_kind]
    if transport_kind == "zeromq":
        if not HAVE_PROC:
            pytest.skip("ZeroMQ's buffers are C memory: measuring them needs Linux /proc")
        measuring = peak_resident_memory()
    else:
        measuring = peak_memory()
    server = await peers.enter_async_context(slow_consumer_server(transport_kind))
    server.handle_function("echo", echo)
    good = await peers.enter_async_context(
        cl.Peer(connect=connect_address(server), identity="good")
    )
    if transport_kind == "quic":  # a small window: its credit is exhausted sooner
        loris = RawClient(
            await QUICTestTransport(receive_window=2**16).connect(
                connect_address(server), max_frame_size=MAX
            )
        )
    else:
        loris = await RawClient.connect(server, transport_kind)
    try:
        await loris.handshake("loris")
        with measuring as grown:
            # Until it is dropped: how many messages the buffers on the way hold depends on
            # their sizes (refusals are small), so no fixed count is sure to be enough. A
            # server that held on to it would grow for ever: stop at the bound, and fail.
            flood = asyncio.create_task(send_calls(loris, None, "echo", b"y" * 2048))
            try:
                async with asyncio.timeout(30):
                    calls = await keep_calling(
                        good,
                        lambda: server.statistics().slow_remotes_dropped > 0 or grown() > bound,
                    )
            except TimeoutError:
                pytest.fail(f"no slow remote dropped in 30 s (grew {grown() / 2**20:.1f} MiB)")
            finally:
                peak = grown()
                flood.cancel()
                await asyncio.gather(flood, return_exceptions=True)
        # Unread replies are bounded by the transport's limits, not by the flood.
        assert peak < bound, f"grew {peak / 2**20:.1f} MiB before the slow remote was dropped"
        assert server.statistics().slow_remotes_dropped >= 1
        assert calls > 0
        assert "loris" not in server.peers
        assert server.peers == {"good"}
        assert await good.invoke("echo", "still here") == "still here"
    finally:
        await loris.aclose()


@pytest.mark.asyncio
async def test_unsent_output_over_max_unsent_size_drops_the_remote(
    peers: contextlib.AsyncExitStack,
) -> None:
    transport = cl.TCPTransport(max_unsent_size=6 * 2**20, slow_remote_timeout=60)
    # Unchunked replies: chunked ones wait for the reader's acks, which bounds them sooner
    # (at most 16 transfers of 4 chunks per link) than max_unsent_size does.
    server = await peers.enter_async_context(
        cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), transport=transport, chunk_size=4 * 2**20)
    )

    async def big(request: cl.Request) -> Any:
        return b"z" * (2 * 2**20)

    server.handle_function("big", big)
    loris = await RawClient.connect(server, "tcp")
    try:
        await loris.handshake("loris")
        await send_calls(loris, 200, "big", b"")
        async with asyncio.timeout(20):
            while not server.statistics().slow_remotes_dropped:
                await asyncio.sleep(0.05)
        assert server.peers == frozenset()
    finally:
        await loris.aclose()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_unsent_size": 1024}, ValueError),
        ({"max_unsent_size": 2.5}, TypeError),
        ({"slow_remote_timeout": 0}, ValueError),
        ({"slow_remote_timeout": "1"}, TypeError),
        ({"reconnect_interval": -1}, ValueError),
        ({"reconnect_interval": 2, "reconnect_max_interval": 1}, ValueError),
        ({"reconnect_max_interval": None}, TypeError),
    ],
)
def test_transport_limits_are_checked(kwargs: dict[str, Any], error: type[Exception]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(error, match=name.split("_")[0]):
        cl.TCPTransport(**kwargs)
    if name.startswith("reconnect"):
        with pytest.raises(error, match="reconnect"):
            cl.ZeroMQTransport(**kwargs)
