"""Peer lifecycle: argument checks, heartbeats, dead remotes, hostile input, clean close."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import zmq

import callosum_like as cl
from callosum_like.errors import ErrorCode
from callosum_like.lower.base import Received
from callosum_like.lower.registry import transport_for
from callosum_like.lower.zeromq import shared_context
from callosum_like.wire import messages as m
from callosum_like.wire.codec import encode, pack_body

from .conftest import (
    PROXY_TRANSPORTS,
    SOCKET_TRANSPORTS,
    PairFactory,
    bind_address,
    connect_address,
    same_address,
)
from .rawpeer import MAX, RawClient, gated_echo

pytestmark = pytest.mark.timeout(30)
FAST_HEARTBEAT = {"heartbeat_interval": 0.1, "heartbeat_timeout": 0.5}
#: The contract "within heartbeat_timeout", with FAST_HEARTBEAT: the timeout, two ticks of
#: the heartbeat loop, and a second of slack for a loaded machine.
WITHIN_HEARTBEAT_TIMEOUT = (
    FAST_HEARTBEAT["heartbeat_timeout"] + 2 * FAST_HEARTBEAT["heartbeat_interval"] + 1.0
)


async def echo(request: cl.Request) -> Any:
    return request.body


# -- misuse ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({}, ValueError, "bind"),
        ({"bind": "tcp://127.0.0.1:0", "connect": "tcp://127.0.0.1:1"}, ValueError, "bind"),
        ({"bind": 5020}, TypeError, "bind"),
        ({"bind": "http://x"}, ValueError, "bind"),
        ({"connect": "tcp://127.0.0.1:1", "invoke_timeout": -1}, ValueError, "invoke_timeout"),
        ({"connect": "tcp://127.0.0.1:1", "execute_timeout": "1"}, TypeError, "execute_timeout"),
        ({"bind": "tcp://127.0.0.1:0", "max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"bind": "tcp://127.0.0.1:0", "max_body_size": 1.5}, TypeError, "max_body_size"),
        ({"bind": "tcp://127.0.0.1:0", "heartbeat_timeout": 1}, ValueError, "heartbeat_timeout"),
        ({"bind": "tcp://127.0.0.1:0", "ordering": "serialized"}, TypeError, "ordering"),
        ({"bind": "tcp://127.0.0.1:0", "identity": ""}, TypeError, "identity"),
        ({"bind": "tcp://127.0.0.1:0", "transport": object()}, TypeError, "transport"),
        ({"bind": "tcp://127.0.0.1:0", "authenticator": object()}, TypeError, "authenticator"),
    ],
)
def test_misuse_raises_naming_the_argument(
    kwargs: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=names):
        cl.Peer(**kwargs)


def test_tcp_address_with_zeromq_transport_is_refused_on_open() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="ZeroMQ"):
            async with cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), transport=cl.ZeroMQTransport):
                pass

    asyncio.run(main())


@pytest.mark.asyncio
async def test_invoke_argument_checks(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    with pytest.raises(ValueError, match="timeout"):
        await client.invoke("x", timeout=-1)
    with pytest.raises(TypeError, match="method"):
        await client.invoke(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="order_key"):
        await client.invoke("x", order_key=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="headers"):
        await client.invoke("x", headers={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="handler"):
        server.handle_function("x", "not callable")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_peer_opens_once(transport_kind: str) -> None:
    peer = cl.Peer(bind=bind_address(transport_kind))
    async with peer:
        pass
    with pytest.raises(RuntimeError):
        async with peer:
            pass
    await peer.aclose()  # idempotent


# -- dead and silent remotes ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_silent_client_fails_calls_to_it_within_heartbeat_timeout(
    transport_kind: str, peers: Any
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), **FAST_HEARTBEAT)
    )
    raw = await RawClient.connect(server, transport_kind)
    try:
        loop = asyncio.get_running_loop()
        hello_sent = loop.time()
        await raw.handshake("mute")  # and nothing after it, not even an answer to a Ping
        assert server.peers == {"mute"}
        with pytest.raises(cl.PeerDisconnectedError, match="mute: heartbeat lost"):
            async with asyncio.timeout(WITHIN_HEARTBEAT_TIMEOUT):  # the contract's bound
                await server.invoke("anything", to="mute")
        assert loop.time() - hello_sent >= FAST_HEARTBEAT["heartbeat_timeout"]
        assert server.peers == frozenset()
    finally:
        await raw.aclose()


@pytest.mark.transports(
    *SOCKET_TRANSPORTS
)  # freezes a socket connection (no socket between NATS peers)
@pytest.mark.asyncio
async def test_silent_server_fails_calls_within_heartbeat_timeout(
    transport_kind: str, peers: Any
) -> None:
    addr = bind_address(transport_kind)
    if isinstance(addr, str):
        addr = cl.ZeroMQAddress(addr)
    conn = await transport_for(addr).bind(addr, max_frame_size=MAX)

    async def welcome_then_ignore(welcomed: asyncio.Future[float]) -> None:
        while True:
            event = await conn.receive()
            if isinstance(event, Received) and len(event.frames) == 1:
                welcomed.set_result(asyncio.get_running_loop().time())
                hello = encode(m.Welcome(identity="mute", assigned="me", max_body_size=MAX))
                await conn.send(hello, to=event.peer)
                return

    loop = asyncio.get_running_loop()
    welcomed: asyncio.Future[float] = loop.create_future()
    responder = asyncio.create_task(welcome_then_ignore(welcomed))
    try:
        target = same_address(transport_kind, conn.local_address)
        client = await peers.enter_async_context(cl.Peer(connect=target, **FAST_HEARTBEAT))
        await responder
        assert client.identity == "me"
        assert client.peers == {"mute"}
        # Nothing comes from the server after its Welcome: the client's call fails once the
        # server was silent for heartbeat_timeout, not before, and not much later.
        with pytest.raises(cl.PeerDisconnectedError, match="mute: heartbeat lost"):
            async with asyncio.timeout(WITHIN_HEARTBEAT_TIMEOUT):  # the contract's bound
                await client.invoke("anything")
        assert loop.time() - welcomed.result() >= FAST_HEARTBEAT["heartbeat_timeout"]
        assert "mute" not in client.peers
    finally:
        responder.cancel()
        await asyncio.gather(responder, return_exceptions=True)
        await conn.aclose()


SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import callosum_like as cl

    async def block(request):
        print("blocking", flush=True)
        await asyncio.sleep(3600)

    async def main():
        kind = sys.argv[1]
        addr = "tcp://127.0.0.1:0" if kind == "zeromq" else cl.TCPAddress("127.0.0.1", 0)
        async with cl.Peer(bind=addr, identity="doomed") as server:
            server.handle_function("block", block)
            print(server.address, flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


# Kills the server's socket; tests/test_nats_faults.py kills nats-server. Not QUIC: a killed
# QUIC server sends nothing, and the heartbeat tests cover a silent one.
@pytest.mark.transports(*PROXY_TRANSPORTS)
@pytest.mark.asyncio
async def test_killed_server_fails_pending_calls_promptly(transport_kind: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, transport_kind],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        address: Any = line.strip()
        if transport_kind == "tcp":
            host, port = address.rsplit(":", 1)
            address = cl.TCPAddress(host, int(port))
        # A heartbeat far longer than the wait below: only the connection drop can end the
        # call in time.
        slow_heartbeat = {"heartbeat_interval": 20.0, "heartbeat_timeout": 60.0}
        async with cl.Peer(connect=address, **slow_heartbeat) as client:
            call = asyncio.create_task(client.invoke("block"))
            assert await asyncio.to_thread(proc.stdout.readline) == "blocking\n"
            proc.send_signal(signal.SIGKILL)
            with pytest.raises(cl.PeerDisconnectedError, match="doomed") as info:
                await asyncio.wait_for(call, 10)
            assert "heartbeat" not in str(info.value)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.asyncio
async def test_client_leaving_fails_the_servers_calls_to_it(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    started = asyncio.Event()

    async def block(request: cl.Request) -> Any:
        started.set()
        await asyncio.sleep(3600)

    client.handle_function("block", block)
    call = asyncio.create_task(server.invoke("block", to="agent-1"))
    async with asyncio.timeout(5):
        await started.wait()
    await client.aclose()
    # The client cancels its handler and answers Cancelled before its Goodbye.
    with pytest.raises((cl.RPCCancelledError, cl.PeerDisconnectedError)):
        await asyncio.wait_for(call, 5)
    assert server.peers == frozenset()


async def next_peer_event(events: cl.PeerEvents, within: float = 5.0) -> cl.PeerEvent:
    async with asyncio.timeout(within):
        return await anext(events)


# -- hostile input --------------------------------------------------------------------------


GARBAGE: list[list[bytes]] = [
    [b""],
    [b"\xc1"],
    [b"not msgpack at all"],
    [pack_body([2, 3, 0, 1, "m", None, None, None, False]), b"\xc0"],  # wrong version
    [pack_body([1, 99, 0])],  # unknown kind
    [pack_body([1, 3, 0, "id", "m", None, None, None, False]), b"\xc0"],  # wrong type
    [pack_body([1, 3, 0, 1, "m"])],  # truncated header
    encode(m.Call(id=5, method="echo"))[:1],  # missing body frame
    [b"a", b"b", b"c"],  # too many frames
    encode(m.Result(id=424242, body=pack_body(1))),  # reply to nothing
    encode(m.Welcome(identity="x", assigned="y", max_body_size=1)),  # wrong direction
]


@pytest.mark.asyncio
async def test_garbage_costs_one_message_and_the_peer_keeps_serving(
    make_pair: PairFactory, transport_kind: str
) -> None:
    server, client = await make_pair()
    server.handle_function("echo", echo)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.send_frames([b"before the handshake"])
        await raw.handshake("hostile")
        for frames in GARBAGE:
            await raw.send_frames(frames)
        await raw.send(m.Call(id=1, method="echo", body=pack_body("still here")))
        reply = await raw.receive()
        assert reply == m.Result(id=1, body=pack_body("still here"))
        assert await client.invoke("echo", "fine") == "fine"
        assert server.statistics().dropped_messages == len(GARBAGE) + 1
    finally:
        await raw.aclose()


@pytest.mark.asyncio
async def test_a_hostile_zeromq_batch_is_counted_in_the_statistics(peers: Any) -> None:
    server = await peers.enter_async_context(cl.Peer(bind="tcp://127.0.0.1:0"))
    server.handle_function("echo", echo)
    raw = zmq.Socket(shared_context(), zmq.DEALER)
    try:
        raw.connect(server.address)
        raw.send_multipart([b"", b"\x00\x00"])  # a batch whose first message has no frames
        client = await peers.enter_async_context(cl.Peer(connect=server.address))
        assert await client.invoke("echo", "fine") == "fine"
        assert server.statistics().dropped_messages == 1
    finally:
        raw.close(linger=0)


@pytest.mark.asyncio
async def test_undecodable_call_body_is_an_internal_error(
    make_pair: PairFactory, transport_kind: str
) -> None:
    server, _ = await make_pair()
    server.handle_function("echo", echo)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake()
        await raw.send(m.Call(id=7, method="echo", body=b"\xc1"))
        reply = await raw.receive()
        assert isinstance(reply, m.Error)
        assert reply.id == 7
        assert reply.code == ErrorCode.INTERNAL
    finally:
        await raw.aclose()


@pytest.mark.asyncio
async def test_oversize_call_that_arrives_is_answered_too_large(
    transport_kind: str, peers: Any
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), max_body_size=1000)
    )
    server.handle_function("echo", echo)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake()
        await raw.send(m.Call(id=9, method="echo", body=pack_body(b"x" * 5000)))
        reply = await raw.receive()
        assert reply == m.Error(id=9, code=ErrorCode.MESSAGE_TOO_LARGE, message=reply.message)  # type: ignore[union-attr]
        assert server.statistics().dropped_messages == 1
    finally:
        await raw.aclose()


@pytest.mark.asyncio
async def test_duplicate_call_id_is_dropped(make_pair: PairFactory, transport_kind: str) -> None:
    server, _ = await make_pair()
    wait, gate = gated_echo()
    server.handle_function("wait", wait)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake()
        await raw.send(m.Call(id=1, method="wait", body=pack_body("a")))
        await raw.send(m.Call(id=1, method="wait", body=pack_body("b")))
        async with asyncio.timeout(5):  # the second arrived while the first still runs
            while server.statistics().dropped_messages < 1:
                await asyncio.sleep(0.01)
        gate.set()
        assert await raw.receive() == m.Result(id=1, body=pack_body("a"))
        assert server.statistics().dropped_messages == 1
    finally:
        await raw.aclose()


# -- clean close ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_close_leaves_no_tasks_behind(make_pair: PairFactory, peers: Any) -> None:
    before = asyncio.all_tasks()
    server, client = await make_pair()
    server.handle_function("echo", echo)
    await asyncio.gather(*(client.invoke("echo", i) for i in range(100)))
    await peers.aclose()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


@pytest.mark.asyncio
async def test_close_while_cancelled_still_releases_everything(transport_kind: str) -> None:
    before = asyncio.all_tasks()
    server = cl.Peer(bind=bind_address(transport_kind))
    await server.__aenter__()
    client = cl.Peer(connect=connect_address(server))
    await client.__aenter__()
    closer = asyncio.create_task(client.aclose())
    await asyncio.sleep(0)
    closer.cancel()
    await asyncio.gather(closer, return_exceptions=True)
    await server.aclose()
    await client.aclose()
    async with asyncio.timeout(5):  # what the cancelled close left running ends by itself
        while asyncio.all_tasks() - before:
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_connect_to_nothing_times_out_cleanly() -> None:
    from .conftest import free_port

    with pytest.raises(TimeoutError, match="connect_timeout"):
        async with cl.Peer(connect=f"tcp://127.0.0.1:{free_port()}", connect_timeout=0.3):
            pass
    with pytest.raises(cl.PeerDisconnectedError, match="cannot connect") as info:
        async with cl.Peer(connect=cl.TCPAddress("127.0.0.1", free_port())):
            pass
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


@pytest.mark.asyncio
async def test_tcp_server_closing_under_a_connected_client_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0))
    await server.__aenter__()
    async with cl.Peer(connect=connect_address(server)) as client, client.events() as events:
        await server.aclose()
        async with asyncio.timeout(5):  # the client saw the connection end
            async for event in events:
                if event.kind is cl.PeerEventKind.DISCONNECTED:
                    break
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == []
