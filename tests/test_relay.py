"""Relays: calls, streams, errors, faults and names across one or two relays, both transports.

Topology of most tests: a bound "manager", a relay "cluster-b" connected to it, and agents
connected to the relay. Everything runs on 127.0.0.1 with ports chosen by the OS.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import callosum_like as cl

from .conftest import bind_address, connect_address

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]
FAST = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}
CONNECTED = cl.PeerEventKind.CONNECTED
DISCONNECTED = cl.PeerEventKind.DISCONNECTED
Stack = contextlib.AsyncExitStack


async def whoami(request: cl.Request) -> Any:
    return request.peer_id


async def echo(request: cl.Request) -> Any:
    return request.body


class Federation:
    """Builds a manager, relays and agents on one transport; everything closes at the end."""

    def __init__(self, stack: Stack, kind: str) -> None:
        self.stack = stack
        self.kind = kind

    async def manager(self, **kwargs: Any) -> cl.Peer:
        options = {"identity": "manager", **FAST, **kwargs}
        peer = cl.Peer(bind=bind_address(self.kind), **options)
        manager = await self.stack.enter_async_context(peer)
        manager.handle_function("whoami", whoami)
        manager.handle_function("echo", echo)
        return manager

    async def relay(self, upstream: Any, identity: str, **kwargs: Any) -> cl.Relay:
        options = {"identity": identity, **FAST, **kwargs}
        bind = options.pop("bind", bind_address(self.kind))
        relay = cl.Relay(bind=bind, upstream=connect_address(upstream), **options)
        await self.stack.enter_async_context(relay)
        await relay.wait_upstream(timeout=10)
        return relay

    async def agent(self, relay: Any, identity: str, **kwargs: Any) -> cl.Peer:
        options = {"identity": identity, **FAST, **kwargs}
        peer = cl.Peer(connect=connect_address(relay), **options)
        agent = await self.stack.enter_async_context(peer)
        agent.handle_function("whoami", whoami)
        agent.handle_function("echo", echo)
        return agent


@pytest.fixture
def federation(transport_kind: str, peers: Stack) -> Federation:
    return Federation(peers, transport_kind)


async def test_calls_cross_one_relay_both_ways(federation: Federation) -> None:
    manager = await federation.manager()
    relay = await federation.relay(manager, "cluster-b")
    agent = await federation.agent(relay, "agent-1")
    await manager.wait_for_peer("cluster-b/agent-1", timeout=10)
    assert manager.peers == {"cluster-b", "cluster-b/agent-1"}
    assert relay.peers == {"agent-1"}
    assert relay.identity == "cluster-b"
    assert await manager.invoke("whoami", to="cluster-b/agent-1") == "cluster-b"
    assert await manager.invoke("echo", {"x": [1, b"\x00"]}, to="cluster-b/agent-1") == {
        "x": [1, b"\x00"]
    }
    assert await agent.invoke("whoami") == "cluster-b/agent-1"
    assert await agent.invoke("echo", [1, 2]) == [1, 2]
    with pytest.raises(cl.MethodNotFoundError):
        await manager.invoke("nothing", to="cluster-b/agent-1")
    with pytest.raises(cl.MethodNotFoundError):
        await agent.invoke("nothing")
    with pytest.raises(cl.MethodNotFoundError):  # the relay itself serves nothing
        await manager.invoke("whoami", to="cluster-b")


async def test_calls_cross_two_chained_relays(federation: Federation) -> None:
    manager = await federation.manager()
    top = await federation.relay(manager, "cluster-b")
    sub = await federation.relay(top, "sub")
    agent = await federation.agent(sub, "agent-1")
    direct = await federation.agent(top, "agent-2")
    await manager.wait_for_peer("cluster-b/sub/agent-1", timeout=10)
    await manager.wait_for_peer("cluster-b/agent-2", timeout=10)
    assert manager.peers == {
        "cluster-b",
        "cluster-b/sub",
        "cluster-b/sub/agent-1",
        "cluster-b/agent-2",
    }
    assert top.peers == {"sub", "sub/agent-1", "agent-2"}
    assert await manager.invoke("echo", "deep", to="cluster-b/sub/agent-1") == "deep"
    assert await manager.invoke("whoami", to="cluster-b/sub/agent-1") == "sub"
    assert await manager.invoke("whoami", to="cluster-b/agent-2") == "cluster-b"
    assert await agent.invoke("whoami") == "cluster-b/sub/agent-1"
    assert await direct.invoke("whoami") == "cluster-b/agent-2"
    results = await asyncio.gather(
        *(manager.invoke("echo", i, to="cluster-b/sub/agent-1") for i in range(50)),
        *(agent.invoke("echo", i) for i in range(50)),
    )
    assert results == [*range(50), *range(50)]
