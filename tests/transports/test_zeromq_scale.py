"""ZeroMQ at fleet scale: descriptors and sockets per connecting peer, one context, limits.

The bound side runs in a child process (a raw ROUTER that reads and answers ``echo``), so
that what is counted in this process is the connecting side alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import zmq
import zmq.asyncio

from callosum_like.addresses import ZeroMQAddress
from callosum_like.lower.base import Connected, Connection, Disconnected, Received
from callosum_like.lower.zeromq import (
    FDS_PER_CONNECTING_PEER,
    MAX_SOCKETS,
    ZeroMQTransport,
    shared_context,
)

from ..conftest import free_port
from .conformance import WAIT, next_event

PEERS = 2_000
HAVE_PROC = os.path.isdir("/proc/self/fd")
MAX_FRAME = 1 << 20

#: A bound ROUTER in a child process: prints its endpoint, echoes ``echo`` messages, and
#: exits when its stdin closes (or on any line, after answering it with a line).
_SERVER = textwrap.dedent(
    """
    import sys, zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(f"tcp://127.0.0.1:{port}", flush=True)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(sys.stdin, zmq.POLLIN)
    while True:
        ready = dict(poller.poll())
        if sock in ready:
            while sock.poll(0):
                parts = sock.recv_multipart()
                if parts[1:2] == [b"echo"]:
                    sock.send_multipart(parts)
        if sys.stdin.fileno() in ready or sys.stdin in ready:
            if not sys.stdin.readline():
                break
    sock.close()
    ctx.term()
    """
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def need_files(count: int) -> None:
    """Skip unless this process may open ``count`` more files (after raising its soft limit)."""
    resource = pytest.importorskip("resource")
    if not HAVE_PROC:
        pytest.skip("counts descriptors from /proc")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if open_fds() + count + 64 > limit:
        pytest.skip(f"needs {count} more open files; the hard limit is {hard}")


@contextlib.contextmanager
def bound_child() -> Iterator[str]:
    """A raw bound ROUTER in a child process; yields its endpoint."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        yield child.stdout.readline().strip()
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung child
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]


async def settle(value: Callable[[], int], target: int, within: float = WAIT) -> int:
    """Wait until ``value()`` is at most ``target`` (libzmq closes sockets in its reaper)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while value() > target:
                await asyncio.sleep(0.05)
    return value()


@contextlib.asynccontextmanager
async def connections(
    transport: ZeroMQTransport, endpoint: str, count: int
) -> AsyncIterator[list[Connection]]:
    conns: list[Connection] = []
    try:
        for _ in range(count):
            conns.append(await transport.connect(ZeroMQAddress(endpoint), max_frame_size=MAX_FRAME))
        yield conns
    finally:
        for conn in conns:
            await conn.aclose()


async def echo(conn: Connection, text: bytes) -> None:
    await conn.send([b"echo", text])
    assert (await next_event(conn, Received)).frames == [b"echo", text]


@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_many_connecting_peers_hold_four_descriptors_each_and_no_new_thread() -> None:
    """2,000 connecting peers in one process: past libzmq's default 1,023 sockets, four
    descriptors each (the eventfds of the DEALER, its monitor and the monitor's reader, and
    the TCP connection), one context and its threads for all; closing them gives every
    descriptor back."""
    need_files(PEERS * FDS_PER_CONNECTING_PEER)
    context = shared_context()
    assert context is zmq.asyncio.Context.instance()
    assert context.get(zmq.MAX_SOCKETS) == MAX_SOCKETS
    with bound_child() as endpoint:
        transport = ZeroMQTransport()
        async with connections(transport, endpoint, 1) as [first]:
            await echo(first, b"warm")  # the context's threads exist now
            fds, tasks = open_fds(), threads()
            async with connections(transport, endpoint, PEERS) as conns:
                await asyncio.gather(*(echo(c, str(i).encode()) for i, c in enumerate(conns)))
                used = open_fds() - fds
                assert used <= PEERS * FDS_PER_CONNECTING_PEER, used / PEERS
                assert threads() == tasks  # no context, no I/O thread per peer
            assert await settle(open_fds, fds) == fds
            assert threads() == tasks
            await echo(first, b"still here")


@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_peers_coming_and_going_never_start_another_context_or_thread() -> None:
    need_files(200 * FDS_PER_CONNECTING_PEER)
    with bound_child() as endpoint:
        transport = ZeroMQTransport()
        async with connections(transport, endpoint, 1) as [first]:
            await echo(first, b"warm")
            fds, tasks = open_fds(), threads()
            for round_ in range(5):
                async with connections(ZeroMQTransport(), endpoint, 200) as conns:
                    await asyncio.gather(*(echo(c, b"%d" % round_) for c in conns))
                    assert threads() == tasks
            assert await settle(open_fds, fds) == fds
            assert threads() == tasks


@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_many_peers_each_hear_their_own_drop_and_reconnection() -> None:
    """Fifty monitors at once: each peer hears its own connection drop and come back."""
    transport = ZeroMQTransport()
    server = await transport.bind(ZeroMQAddress("tcp://127.0.0.1:0"), max_frame_size=MAX_FRAME)
    address = ZeroMQAddress(server.local_address)
    try:
        async with connections(transport, server.local_address, 50) as conns:
            for i, conn in enumerate(conns):
                assert isinstance(await next_event(conn), Connected)
                await conn.send([b"hello", bytes([i])])
            hello = set()
            while len(hello) < len(conns):  # every one is connected: each will see it drop
                hello.add((await next_event(server, Received)).frames[1])
            await server.aclose()
            for conn in conns:
                assert isinstance(await next_event(conn, Disconnected), Disconnected)
            async with asyncio.timeout(WAIT):
                while True:
                    with contextlib.suppress(OSError, zmq.ZMQError):
                        server = await transport.bind(address, max_frame_size=MAX_FRAME)
                        break
                    await asyncio.sleep(0.05)
            for i, conn in enumerate(conns):
                assert isinstance(await next_event(conn, Connected), Connected)
                await conn.send([b"back", bytes([i])])
            got = set()
            while len(got) < len(conns):
                event = await next_event(server, Received)
                got.add(event.frames[1])
            assert got == {bytes([i]) for i in range(len(conns))}
    finally:
        await server.aclose()


def _term(context: zmq.Context[Any], within: float) -> bool:
    """Terminate ``context`` in a thread; whether it finished (it waits for open sockets)."""
    done = threading.Event()

    def run() -> None:
        context.term()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(within)


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_users_context_is_used_sized_by_them_and_left_open() -> None:
    context = zmq.asyncio.Context()
    context.set(zmq.MAX_SOCKETS, 4096)
    raw: zmq.Socket[Any] = zmq.Socket(context, zmq.ROUTER)
    raw.setsockopt(zmq.LINGER, 0)
    try:
        # inproc:// joins sockets of one context only: reaching it proves the context is used.
        raw.bind("inproc://users-own")
        transport = ZeroMQTransport(context=context)
        conn = await transport.connect(ZeroMQAddress("inproc://users-own"), max_frame_size=1024)
        await conn.send([b"hi"])
        async with asyncio.timeout(WAIT):
            while not raw.poll(0):
                await asyncio.sleep(0.01)
        assert raw.recv_multipart()[1:] == [b"hi"]
        # tcp://, monitored: the monitor and its hub live in the user's context too.
        server = await transport.bind(ZeroMQAddress("tcp://127.0.0.1:0"), max_frame_size=1024)
        client = await transport.connect(ZeroMQAddress(server.local_address), max_frame_size=1024)
        await client.send([b"hello"])
        assert (await next_event(server, Received)).frames == [b"hello"]
        for c in (client, server, conn):
            await c.aclose()
        assert not context.closed
        assert context.get(zmq.MAX_SOCKETS) == 4096  # ours to size, not the transport's
    finally:
        raw.close(linger=0)
    assert _term(context, WAIT), "a socket of ours was left open in the user's context"


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_full_context_says_which_limit_and_how_to_raise_it() -> None:
    context = zmq.asyncio.Context()
    context.set(zmq.MAX_SOCKETS, 8)
    transport = ZeroMQTransport(context=context)
    port = free_port()  # nothing listens there: the peers only try
    conns: list[Connection] = []
    try:
        with pytest.raises(OSError, match="ZMQ_MAX_SOCKETS is 8") as caught:
            for _ in range(20):  # tcp://: each takes two sockets, its DEALER and its monitor
                conns.append(
                    await transport.connect(
                        ZeroMQAddress(f"tcp://127.0.0.1:{port}"), max_frame_size=64
                    )
                )
        assert caught.value.errno == 24  # EMFILE
        assert 2 <= len(conns) <= 4  # and one for the monitors' hub
    finally:
        for conn in conns:
            await conn.aclose()
    assert _term(context, WAIT)


def test_the_first_socket_raises_the_soft_limit_on_open_files() -> None:
    resource = pytest.importorskip("resource")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit on open files is only {hard}")
    script = textwrap.dedent(
        """
        import asyncio, resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        from callosum_like.addresses import ZeroMQAddress
        from callosum_like.lower.zeromq import ZeroMQTransport
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 256  # not at import

        async def main():
            server = await ZeroMQTransport().bind(
                ZeroMQAddress("tcp://127.0.0.1:0"), max_frame_size=64
            )
            await server.aclose()

        asyncio.run(main())
        print(*resource.getrlimit(resource.RLIMIT_NOFILE))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    raised, still_hard = map(int, out.stdout.split())
    assert still_hard == hard
    expected = hard if hard != resource.RLIM_INFINITY else raised
    assert raised == expected


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_running_out_of_open_files_names_the_limit() -> None:
    resource = pytest.importorskip("resource")
    if not HAVE_PROC:
        pytest.skip("counts descriptors from /proc")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    context = zmq.asyncio.Context()
    context.set(zmq.MAX_SOCKETS, 4096)
    transport = ZeroMQTransport(context=context)
    conns: list[Connection] = []
    # inproc:// peers: one eventfd each and nothing made in libzmq's threads, so the limit
    # is met where this test can see it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 40, hard))
    try:
        with pytest.raises(OSError, match="RLIMIT_NOFILE") as caught:
            for _ in range(100):
                conns.append(
                    await transport.connect(ZeroMQAddress("inproc://nobody"), max_frame_size=64)
                )
        assert caught.value.errno == 24
        assert "ulimit -n" in str(caught.value)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for conn in conns:
            await conn.aclose()
    assert _term(context, WAIT)
