"""``invoke_all``: one call to many remotes, each mapped to its result or its error.

Both transports, real sockets; names behind a relay included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import pytest

import callosum_like as cl
from callosum_like import calls
from callosum_like.wire.codec import pack_body

from .conftest import Blocker, bind_address, connect_address, open_relay

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

Stack = contextlib.AsyncExitStack


async def whoami(request: cl.Request) -> Any:
    return [request.peer_id, request.body]


async def server_with_agents(
    stack: Stack, kind: str, names: list[str], **server_options: Any
) -> tuple[cl.Peer, dict[str, cl.Peer]]:
    server = await stack.enter_async_context(
        cl.Peer(bind=bind_address(kind), identity="manager", **server_options)
    )
    agents = {}
    for name in names:
        agent = cl.Peer(connect=connect_address(server), identity=name)
        agents[name] = await stack.enter_async_context(agent)
        agents[name].handle_function("whoami", whoami)
    return server, agents


async def test_every_connected_peer_is_called_once_with_one_packed_body(
    transport_kind: str, peers: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = await server_with_agents(peers, transport_kind, ["a-3", "a-1", "a-2"])
    packed = []

    def counting_pack_body(value: Any) -> Any:
        packed.append(value)
        return pack_body(value)

    monkeypatch.setattr(calls, "pack_body", counting_pack_body)
    results = await server.invoke_all("whoami", {"n": 7})
    assert results == {name: ["manager", {"n": 7}] for name in ["a-1", "a-2", "a-3"]}
    assert list(results) == ["a-1", "a-2", "a-3"]  # the order of sorted(peers)
    assert packed == [{"n": 7}]
    assert server.statistics().calls_out == 3


async def test_each_name_maps_to_its_own_outcome_in_the_order_given(
    transport_kind: str, peers: Stack
) -> None:
    server, agents = await server_with_agents(peers, transport_kind, ["ok", "bad"])

    async def fail(request: cl.Request) -> Any:
        raise ValueError("no")

    agents["ok"].handle_function("maybe", lambda request: asyncio.sleep(0, "fine"))
    agents["bad"].handle_function("maybe", fail)
    results = await server.invoke_all("maybe", to=["bad", "nobody", "ok", "bad"])
    assert list(results) == ["bad", "nobody", "ok"]  # a repeated name is called once
    assert isinstance(results["bad"], cl.RPCUserError)
    assert "ValueError" in str(results["bad"])
    assert isinstance(results["nobody"], cl.UnknownPeerError)
    assert results["ok"] == "fine"
    # Unknown names are answered without a call; the two others were called once each.
    assert server.statistics().calls_out == 2


async def test_the_timeout_bounds_the_whole_fan_out_and_cancels_the_slow_handlers(
    transport_kind: str, peers: Stack
) -> None:
    server, agents = await server_with_agents(peers, transport_kind, ["quick", "slow"])
    hang = Blocker()
    agents["quick"].handle_function("work", lambda request: asyncio.sleep(0, "done"))
    agents["slow"].handle_function("work", hang)
    results = await server.invoke_all("work", timeout=0.5)
    assert hang.started.is_set()
    assert results["quick"] == "done"
    assert isinstance(results["slow"], cl.RPCTimeoutError)
    assert isinstance(results["slow"], TimeoutError)
    async with asyncio.timeout(10):
        await hang.cancelled.wait()


async def test_cancelling_the_fan_out_cancels_every_remote_handler(
    transport_kind: str, peers: Stack
) -> None:
    names = ["a-1", "a-2", "a-3"]
    server, agents = await server_with_agents(peers, transport_kind, names)
    started: set[str] = set()
    cancelled: set[str] = set()
    all_started, all_cancelled = asyncio.Event(), asyncio.Event()

    def hang_as(name: str) -> Any:
        async def hang(request: cl.Request) -> Any:
            started.add(name)
            if started == set(names):
                all_started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.add(name)
                if cancelled == set(names):
                    all_cancelled.set()
                raise

        return hang

    for name, agent in agents.items():
        agent.handle_function("hang", hang_as(name))
    fan_out = asyncio.create_task(server.invoke_all("hang"))
    async with asyncio.timeout(10):
        await all_started.wait()
    fan_out.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fan_out
    async with asyncio.timeout(10):
        await all_cancelled.wait()


async def test_a_connecting_peer_fans_out_to_its_one_remote(
    transport_kind: str, peers: Stack
) -> None:
    server, agents = await server_with_agents(peers, transport_kind, ["agent-1"])
    server.handle_function("whoami", whoami)
    assert await agents["agent-1"].invoke_all("whoami", 1) == {"manager": ["agent-1", 1]}


async def test_names_behind_a_relay_are_called_too(transport_kind: str, peers: Stack) -> None:
    manager = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="manager")
    )
    relay = await open_relay(peers, transport_kind, connect_address(manager), "cluster")
    for name in ["agent-1", "agent-2"]:
        agent = await peers.enter_async_context(
            cl.Peer(connect=connect_address(relay), identity=name)
        )
        agent.handle_function("whoami", whoami)
    direct = await peers.enter_async_context(
        cl.Peer(connect=connect_address(manager), identity="direct")
    )
    direct.handle_function("whoami", whoami)
    for name in ["cluster/agent-1", "cluster/agent-2"]:
        await manager.wait_for_peer(name, timeout=10)
    results = await manager.invoke_all("whoami", "x", to=["cluster/agent-2", "direct"])
    assert results == {
        "cluster/agent-2": ["cluster", "x"],  # an agent sees its relay call
        "direct": ["manager", "x"],
    }
    everyone = await manager.invoke_all("whoami", "y")
    assert set(everyone) == {"cluster", "cluster/agent-1", "cluster/agent-2", "direct"}
    assert isinstance(everyone["cluster"], cl.MethodNotFoundError)  # a relay serves nothing
    assert everyone["cluster/agent-1"] == ["cluster", "y"]


async def test_misuse_is_refused_before_anything_is_sent(transport_kind: str, peers: Stack) -> None:
    server, _ = await server_with_agents(peers, transport_kind, ["agent-1"])

    async def items() -> Any:
        yield 1

    with pytest.raises(TypeError, match="iterable of identities"):
        await server.invoke_all("whoami", to="agent-1")
    with pytest.raises(TypeError, match="identities"):
        await server.invoke_all("whoami", to=[b"agent-1"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="streamed body"):
        await server.invoke_all("whoami", items())
    with pytest.raises(TypeError, match="msgpack"):
        await server.invoke_all("whoami", object())
    with pytest.raises(ValueError, match="timeout"):
        await server.invoke_all("whoami", timeout=-1)
    with pytest.raises(TypeError, match="method"):
        await server.invoke_all("")
    assert server.statistics().calls_out == 0
    assert await server.invoke_all("whoami", to=[]) == {}


async def test_a_body_too_large_for_one_remote_fails_only_that_one(
    transport_kind: str, peers: Stack
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="manager")
    )
    for name, limit in [("small", 1024), ("large", 1 << 20)]:
        agent = await peers.enter_async_context(
            cl.Peer(connect=connect_address(server), identity=name, max_body_size=limit)
        )
        agent.handle_function("size", lambda request: asyncio.sleep(0, len(request.body)))
    results = await server.invoke_all("size", b"x" * 4096)
    assert isinstance(results["small"], cl.MessageTooLargeError)
    assert results["large"] == 4096


async def test_a_closed_peer_refuses(transport_kind: str) -> None:
    server = cl.Peer(bind=bind_address(transport_kind))
    with pytest.raises(cl.PeerClosedError):
        await server.invoke_all("whoami")


async def test_a_body_in_chunks_goes_to_every_remote(transport_kind: str, peers: Stack) -> None:
    """Over ``chunk_size``: each call waits for its remote's credit, side by side."""
    server, agents = await server_with_agents(peers, transport_kind, ["a-1", "a-2", "a-3"])
    for agent in agents.values():
        agent.handle_function("size", lambda request: asyncio.sleep(0, len(request.body)))
    body = os.urandom(1 << 20)  # incompressible: it stays over chunk_size
    assert await server.invoke_all("size", body) == dict.fromkeys(agents, 1 << 20)
