"""Large bodies through a relay: its receive loops never wait for a next hop's credit.

Found by the flap load over the network test bed (``callosum_like.tools.flaps``), fixed by
``outbox.Outboxes``:

1. **Both ways at once.** A relay used to forward a large call by sending it, a window of
   chunks ahead of the next hop, from inside its receive loop: a large call going up held the
   lower peer's loop until the manager's credit came, which the upper loop reads, while a
   large call coming down held the upper loop the same way. Each waited for the other.
2. **A short break of the lower hop.** A large call down into a suspended lower hop held the
   relay's upper loop until that hop resumed: the upper hop's heartbeat expired, and a stale
   ``Goodbye`` the manager had sent to the relay's unanswered new connections was then taken
   for a refused resumption (now only a ``Goodbye`` whose reason starts with
   ``resumption.RESUME_REFUSED`` is).
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

import callosum_like as cl

from .conftest import bind_address, connect_address, open_relay
from .netproxy import Proxy

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

#: Over ``chunk_size`` (256 KiB), so each body travels in chunks; incompressible, so that
#: it still does once compressed.
BODY = random.Random(20).randbytes(4 * 2**20)
ROUNDS = 3
#: Seconds the six echoes get; they take well under one when nothing is stuck.
DEADLINE = 10.0
RESUME = {"resume_timeout": 10.0, "heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}
#: Seconds the lower hop stays cut: over heartbeat_timeout, far under resume_timeout.
BREAK = 3.0

Stack = contextlib.AsyncExitStack


async def echo(request: cl.Request) -> bytes:
    assert isinstance(request.body, bytes)
    return request.body


async def test_large_bodies_cross_a_relay_in_both_directions_at_once(
    transport_kind: str, peers: Stack
) -> None:
    manager = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), identity="manager")
    )
    relay = await open_relay(peers, transport_kind, connect_address(manager), "cluster")
    agent = await peers.enter_async_context(
        cl.Peer(connect=connect_address(relay), identity="agent")  # type: ignore[arg-type]
    )
    manager.handle_function("echo", echo)
    agent.handle_function("echo", echo)
    await manager.wait_for_peer("cluster/agent", timeout=10)
    # One direction at a time crosses (the precondition: the path and the bodies work).
    assert await asyncio.wait_for(agent.invoke("echo", BODY), DEADLINE) == BODY
    down = manager.invoke("echo", BODY, to="cluster/agent")
    assert await asyncio.wait_for(down, DEADLINE) == BODY

    async def up() -> None:
        for _ in range(ROUNDS):
            assert await agent.invoke("echo", BODY) == BODY

    async def downs() -> None:
        for _ in range(ROUNDS):
            assert await manager.invoke("echo", BODY, to="cluster/agent") == BODY

    slow = 3 if transport_kind == "quic" else 1  # aioquic moves bulk at tens of MB/s
    async with asyncio.timeout(DEADLINE * slow):
        await asyncio.gather(up(), downs())


async def test_a_large_call_down_lives_through_a_short_break_of_the_lower_hop(
    peers: Stack,
) -> None:
    kind = "tcp"
    manager = await peers.enter_async_context(
        cl.Peer(bind=bind_address(kind), identity="manager", **RESUME)
    )
    relay = await open_relay(peers, kind, connect_address(manager), "cluster", **RESUME)
    lower = await peers.enter_async_context(Proxy.to(relay))  # type: ignore[arg-type]
    agent = await peers.enter_async_context(
        cl.Peer(connect=lower.address(kind), identity="agent", **RESUME)
    )
    agent.handle_function("echo", echo)
    await manager.wait_for_peer("cluster/agent", timeout=10)
    assert await manager.invoke("echo", b"small", to="cluster/agent") == b"small"
    lower.blocked = True
    assert lower.cut() == 1  # the lower hop is down: its session is kept
    call = asyncio.create_task(manager.invoke("echo", BODY, to="cluster/agent"))
    await asyncio.sleep(BREAK)  # the length of the break is the scenario
    lower.blocked = False
    assert await asyncio.wait_for(call, 30) == BODY
