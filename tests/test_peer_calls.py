"""The Peer over real 127.0.0.1 sockets: calls in both directions, identities, headers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import callosum_like as cl

from .conftest import PairFactory, bind_address

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def echo(request: cl.Request) -> Any:
    return request.body


async def whoami(request: cl.Request) -> Any:
    return {"peer_id": request.peer_id, "method": request.method, "key": request.order_key}


async def read_headers(request: cl.Request) -> Any:
    return dict(request.headers)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"x": [1, 2, b"\x00"]}, {"x": [1, 2, b"\x00"]}),
        (None, None),
        (True, True),
        (-(2**63), -(2**63)),
        (2**64 - 1, 2**64 - 1),
        (1.5, 1.5),
        ("héllo", "héllo"),
        (b"\x00\xff" * 1000, b"\x00\xff" * 1000),
        ((1, (2, 3)), [1, [2, 3]]),
        ({1: "int keys", "n": {"nested": []}}, {1: "int keys", "n": {"nested": []}}),
    ],
)
async def test_echo_round_trips_msgpack_values(
    make_pair: PairFactory, body: Any, expected: Any
) -> None:
    server, client = await make_pair()
    server.handle_function("echo", echo)
    assert await client.invoke("echo", body) == expected


async def test_both_sides_serve_and_invoke_over_one_connection(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("whoami", whoami)
    client.handle_function("whoami", whoami)
    assert (await client.invoke("whoami"))["peer_id"] == "agent-1"
    assert (await server.invoke("whoami", to="agent-1"))["peer_id"] == "server"
    assert (await server.invoke("whoami"))["method"] == "whoami"  # to=None: the only peer


async def test_bound_side_calls_back_while_serving(make_pair: PairFactory) -> None:
    server, client = await make_pair()

    async def ask_back(request: cl.Request) -> Any:
        inner = await server.invoke("double", request.body, to=request.peer_id)
        return inner + 1

    async def double(request: cl.Request) -> Any:
        return request.body * 2

    server.handle_function("ask_back", ask_back)
    client.handle_function("double", double)
    assert await client.invoke("ask_back", 20) == 41


async def test_connecting_side_ignores_to_none(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("echo", echo)
    assert await client.invoke("echo", 1, to=None) == 1


async def test_to_picks_among_several_peers(make_pair: PairFactory, connect_client: Any) -> None:
    server, client = await make_pair()
    other = await connect_client(server, identity="agent-2")
    client.handle_function("whoami", whoami)
    other.handle_function("whoami", whoami)
    await server.wait_for_peer("agent-2", timeout=5)
    assert server.peers == {"agent-1", "agent-2"}
    assert client.peers == {"server"}
    assert (await server.invoke("whoami", to="agent-2"))["peer_id"] == "server"
    with pytest.raises(cl.UnknownPeerError):
        await server.invoke("whoami")
    with pytest.raises(cl.UnknownPeerError):
        await server.invoke("whoami", to="agent-9")


async def test_identity_is_generated_when_not_given(
    make_pair: PairFactory, connect_client: Any
) -> None:
    server, _ = await make_pair()
    anonymous = await connect_client(server)
    server.handle_function("whoami", whoami)
    seen = (await anonymous.invoke("whoami"))["peer_id"]
    assert seen == anonymous.identity
    assert seen.startswith("peer-")
    assert seen in server.peers


async def test_wait_for_peer(transport_kind: str, peers: Any) -> None:
    from .conftest import connect_address

    server = await peers.enter_async_context(cl.Peer(bind=bind_address(transport_kind)))
    with pytest.raises(TimeoutError):
        await server.wait_for_peer("late", timeout=0.1)
    waiter = asyncio.create_task(server.wait_for_peer("late", timeout=5))
    await asyncio.sleep(0)  # one step of the waiter: it registers (no I/O, load-independent)
    assert not waiter.done()  # so it is woken by the connection, not already satisfied
    await peers.enter_async_context(cl.Peer(connect=connect_address(server), identity="late"))
    await waiter
    await server.wait_for_peer("late")  # already there: returns at once


async def test_order_key_and_method_reach_the_handler(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("whoami", whoami)
    got = await client.invoke("whoami", order_key="k1")
    assert got == {"peer_id": "agent-1", "method": "whoami", "key": "k1"}


async def test_headers_reach_the_handler(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("headers", read_headers)
    assert await client.invoke("headers") == {}
    sent = {"trace-id": "abc", "token": b"\x01\x02"}
    assert await client.invoke("headers", headers=sent) == sent


async def test_unhandle_function(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("echo", echo)
    assert await client.invoke("echo", 1) == 1
    server.unhandle_function("echo")
    with pytest.raises(cl.MethodNotFoundError):
        await client.invoke("echo", 1)
    with pytest.raises(KeyError):
        server.unhandle_function("echo")


@pytest.mark.parametrize("server_compress", [True, False])
async def test_large_bodies_compress_and_arrive_whatever_the_setting(
    make_pair: PairFactory, server_compress: bool
) -> None:
    server, client = await make_pair(compress=server_compress, client={"compress": True})
    server.handle_function("echo", echo)
    body = b"compressible " * 100_000
    assert await client.invoke("echo", body) == body
    sent = client.statistics().bytes_out
    assert sent < len(body) // 4  # the client compressed its call
    received = client.statistics().bytes_in
    assert (received < len(body) // 4) is server_compress


async def test_statistics_count_calls_and_bytes(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("echo", echo)
    for _ in range(3):
        await client.invoke("echo", b"x" * 100)
    with pytest.raises(cl.MethodNotFoundError):
        await client.invoke("missing")
    stats = client.statistics()
    assert stats.calls_out == 4
    assert stats.calls_in_flight == 0
    assert stats.bytes_out > 300
    assert stats.bytes_in > 300
    assert stats.errors["MethodNotFoundError"] == 1
    assert stats.connected_peers == 1
    assert server.statistics().calls_in == 4
    with pytest.raises(AttributeError):
        stats.calls_out = 0  # type: ignore[misc]


async def test_many_concurrent_calls(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("echo", echo)
    results = await asyncio.gather(*(client.invoke("echo", i) for i in range(2000)))
    assert results == list(range(2000))


@pytest.mark.parametrize(
    "bind",
    [
        cl.ZeroMQAddress("tcp://127.0.0.1:0"),
        "ipc://{tmp}/peer.sock",
        "inproc://peer-test-{n}",
    ],
)
async def test_zeromq_endpoints_and_explicit_addresses(bind: Any, tmp_path: Any) -> None:
    if isinstance(bind, str):
        bind = bind.format(tmp=tmp_path, n=id(tmp_path))
    async with cl.Peer(bind=bind, identity="server") as server:
        server.handle_function("whoami", whoami)
        async with cl.Peer(connect=cl.ZeroMQAddress(server.address), identity="a") as client:
            client.handle_function("whoami", whoami)
            assert (await client.invoke("whoami"))["peer_id"] == "a"
            assert (await server.invoke("whoami", to="a"))["peer_id"] == "server"


@pytest.mark.parametrize("as_class", [True, False])
async def test_transport_passed_explicitly(as_class: bool) -> None:
    transport: Any = cl.TCPTransport if as_class else cl.TCPTransport()
    async with cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), transport=transport) as server:
        server.handle_function("echo", echo)
        host, port = server.address.rsplit(":", 1)
        target = cl.TCPAddress(host, int(port))
        async with cl.Peer(connect=target, transport=transport) as client:
            assert await client.invoke("echo", "x") == "x"
