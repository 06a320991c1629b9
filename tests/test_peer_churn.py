"""Churn: many short-lived clients against one bound peer leave nothing behind.

Each cycle connects, handshakes, calls both ways and leaves, either cleanly (Goodbye) or by
vanishing (its connection closed with no Goodbye, as a killed process's would be; on
ZeroMQ only the heartbeat can tell). Afterwards the bound peer's tasks, file descriptors
and per-remote tables are back where they started.

The per-remote tables are internal, so ``table_sizes`` reads private attributes: this is a
leak test, and those tables are exactly what could leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import tracemalloc
from typing import Any

import pytest

import callosum_like as cl

from .conftest import SOCKET_TRANSPORTS, bind_address, connect_address
from .rawpeer import RawClient

pytestmark = pytest.mark.timeout(60)
FAST_HEARTBEAT = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}
CYCLES = 120
AT_ONCE = 8


async def echo(request: cl.Request) -> Any:
    return request.body


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def table_sizes(peer: cl.Peer) -> dict[str, int]:
    """The sizes of every table a Peer keeps per remote or per call (white-box on purpose:
    the test is that none of them grows with clients that came and went)."""
    dispatcher = peer._dispatcher  # noqa: SLF001
    remotes = peer._remotes  # noqa: SLF001
    connection: Any = peer._connection  # noqa: SLF001
    return {
        "links": len(remotes.links),
        "by_identity": len(remotes.by_identity),
        "peer_waiters": len(remotes._waiters),  # noqa: SLF001
        "background": len(peer._background),  # noqa: SLF001
        "event_iterators": len(peer._events._iterators),  # noqa: SLF001
        "inflight": len(dispatcher._inflight),  # noqa: SLF001
        "reorder": len(dispatcher._reorder._keys),  # noqa: SLF001
        "serial": len(dispatcher._serial._waiting),  # noqa: SLF001
        "transport_remotes": len(
            getattr(connection, "_streams", getattr(connection, "_known", ()))
        ),
    }


async def settled(condition: Any, timeout: float = 20) -> None:
    """Wait until ``condition()`` holds: sockets and links close a moment after ``aclose``."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def clean_cycle(server: cl.Peer, number: int) -> None:
    async with cl.Peer(connect=connect_address(server), identity=f"clean-{number}") as client:
        client.handle_function("echo", echo)
        assert await client.invoke("echo", number) == number
        assert await server.invoke("echo", number, to=f"clean-{number}") == number
        async for item in client.stream("count", 3):
            assert item in range(3)


async def vanishing_cycle(server: cl.Peer, kind: str, number: int) -> None:
    raw = await RawClient.connect(server, kind)
    try:
        await raw.handshake(f"vanishing-{number}")
    finally:
        await raw.aclose()  # no Goodbye


@pytest.mark.transports(
    *SOCKET_TRANSPORTS
)  # one NATS client holds more descriptors than the socket it counts
@pytest.mark.asyncio
async def test_short_lived_clients_leave_no_tasks_fds_or_table_entries(
    transport_kind: str, peers: contextlib.AsyncExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)  # not the "went silent" warnings: caplog keeps records
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="server", **FAST_HEARTBEAT)
    )
    server.handle_function("echo", echo)

    async def count(request: cl.Request) -> Any:
        for item in range(request.body):
            yield item

    server.handle_function("count", count)

    async def run(cycles: range) -> None:
        for start in range(cycles.start, cycles.stop, AT_ONCE):
            batch = range(start, min(start + AT_ONCE, cycles.stop))
            await asyncio.gather(
                *(
                    clean_cycle(server, n) if n % 2 else vanishing_cycle(server, transport_kind, n)
                    for n in batch
                )
            )
        await settled(lambda: not server.peers and not table_sizes(server)["links"])
        if transport_kind == "quic":  # a QUIC connection drains a moment after its close,
            await settled(lambda: not table_sizes(server)["transport_remotes"])
            await asyncio.sleep(3)  # and what held a closed connection lets go of it

    await run(range(2 * AT_ONCE))  # warm up: lazily created sockets, threads and caches
    tasks, fds, tables = len(asyncio.all_tasks()), open_fds(), table_sizes(server)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await run(range(CYCLES))
        await settled(lambda: open_fds() <= fds)
        gc.collect()  # closed peers are cycles of objects: count only what is still reachable
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(asyncio.all_tasks()) == tasks
    assert table_sizes(server) == tables
    assert all(size == 0 for name, size in tables.items() if name != "event_iterators")
    assert server.statistics().disconnects >= CYCLES
    # A leak of one link, session or socket per cycle would be tens of kilobytes each. QUIC:
    # aioquic keeps a few small strings per connection it has seen (about 1 KiB a cycle,
    # measured with tracemalloc), far below one connection's 20 KiB and more.
    bound = 256 * 1024 if transport_kind == "quic" else 128 * 1024
    assert grown < bound, f"{grown} bytes more after {CYCLES} cycles"
