"""Relays: calls, streams, errors, faults and names across one or two relays, both transports.

Topology of most tests: a bound "manager", a relay "cluster-b" connected to it, and agents
connected to the relay. Everything runs on 127.0.0.1 with ports chosen by the OS.

What must die or freeze (a relay, an agent, a caller) runs in a child process
(tests/relayproc.py) and gets SIGKILL or SIGSTOP; the ``children`` fixture reaps them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

import callosum_like as cl
from callosum_like.wire.messages import STREAM_WINDOW

from .conftest import SOCKET_TRANSPORTS, Meeting, bind_address, connect_address, open_rebinding
from .relayproc import Children, port_of

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]
#: Heartbeats fast enough to see a dead ZeroMQ peer quickly, slow enough for a loaded machine.
FAST = {"heartbeat_interval": 0.25, "heartbeat_timeout": 1.5}
CONNECTED = cl.PeerEventKind.CONNECTED
DISCONNECTED = cl.PeerEventKind.DISCONNECTED
Stack = contextlib.AsyncExitStack


async def whoami(request: cl.Request) -> Any:
    return request.peer_id


async def echo(request: cl.Request) -> Any:
    return request.body


async def reachable(peer: cl.Peer, *names: str) -> None:
    """Wait until ``peer`` can call each of ``names``."""
    for name in names:
        await peer.wait_for_peer(name, timeout=10)


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

    async def one_agent(self, **agent_kwargs: Any) -> tuple[cl.Peer, cl.Relay, cl.Peer]:
        """A manager, the relay "cluster-b" and its "agent-1", reachable from the manager."""
        manager = await self.manager()
        relay = await self.relay(manager, "cluster-b")
        agent = await self.agent(relay, "agent-1", **agent_kwargs)
        await reachable(manager, "cluster-b/agent-1")
        return manager, relay, agent


@pytest.fixture
def federation(transport_kind: str, peers: Stack) -> Federation:
    return Federation(peers, transport_kind)


@pytest_asyncio.fixture
async def children() -> AsyncIterator[Children]:
    """Relays and peers in child processes (tests/relayproc.py), killed and reaped at the end."""
    started = Children()
    try:
        yield started
    finally:
        await started.reap_all()


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait until ``condition()`` holds, polling; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_calls_cross_one_relay_both_ways(federation: Federation) -> None:
    manager, relay, agent = await federation.one_agent()
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
    await reachable(manager, "cluster-b/sub/agent-1", "cluster-b/agent-2")
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


async def next_event(events: cl.PeerEvents) -> cl.PeerEvent:
    async with asyncio.timeout(10):
        return await anext(events)


class Gate:
    """A handler that blocks until released, and tells when it started and how it ended."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, request: cl.Request) -> Any:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return request.body


async def test_the_manager_sees_agents_come_and_go(federation: Federation) -> None:
    manager = await federation.manager()
    async with manager.events() as events:
        relay = await federation.relay(manager, "cluster-b")
        assert await next_event(events) == cl.PeerEvent(CONNECTED, "cluster-b")
        async with cl.Peer(connect=connect_address(relay), identity="agent-1", **FAST):
            assert await next_event(events) == cl.PeerEvent(CONNECTED, "cluster-b/agent-1")
            assert "cluster-b/agent-1" in manager.peers
        event = await next_event(events)
        assert (event.kind, event.identity) == (DISCONNECTED, "cluster-b/agent-1")
        assert "closed" in event.reason
        assert manager.peers == {"cluster-b"}
        await relay.aclose()
        event = await next_event(events)
        assert (event.kind, event.identity) == (DISCONNECTED, "cluster-b")


async def test_a_slow_consumer_holds_the_producer_back_across_a_relay(
    federation: Federation,
) -> None:
    manager = await federation.manager()
    top = await federation.relay(manager, "cluster-b")
    sub = await federation.relay(top, "sub")
    agent = await federation.agent(sub, "agent-1")
    produced = 0

    async def count(request: cl.Request) -> Any:
        nonlocal produced
        for i in range(request.body):
            yield i
            produced += 1  # item i went out: its peer asks for the next one

    agent.handle_function("count", count)
    await reachable(manager, "cluster-b/sub/agent-1")
    items: list[int] = []
    ahead: list[int] = []  # items sent and not yet taken, each time the consumer stalled

    def unacknowledged() -> int:  # the item in hand counts until the consumer asks for more
        return produced - (len(items) - 1)

    async for item in manager.stream("count", 80, to="cluster-b/sub/agent-1"):
        items.append(item)
        # Credit returns in batches of half a window, as the consumer asks for more: at these
        # points it has returned all it took, and the producer may send a whole window ahead.
        if len(items) % STREAM_WINDOW == 1:  # the consumer stalls: the producer fills it...
            await until(lambda: unacknowledged() >= STREAM_WINDOW)
            # ... and no further: a round trip to the agent gives it time to go on if it could.
            assert await manager.invoke("echo", 0, to="cluster-b/sub/agent-1") == 0
            ahead.append(unacknowledged())
    assert items == list(range(80))
    # End-to-end credit: the relays add no window of their own.
    assert ahead == [STREAM_WINDOW] * 5
    # The other direction: the manager streams to an agent.
    manager.handle_function("count", count)
    assert [i async for i in agent.stream("count", 40)] == list(range(40))


async def test_leaving_a_stream_early_cancels_the_generator_behind_the_relay(
    federation: Federation,
) -> None:
    manager, _relay, agent = await federation.one_agent()
    closed = asyncio.Event()

    async def forever(request: cl.Request) -> Any:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    agent.handle_function("forever", forever)
    async for item in manager.stream("forever", to="cluster-b/agent-1"):
        if item == 5:
            break
    await asyncio.wait_for(closed.wait(), 10)


async def test_timeouts_and_cancellation_cross_a_relay(federation: Federation) -> None:
    manager, _relay, agent = await federation.one_agent()
    down, up = Gate(), Gate()
    agent.handle_function("block", down)
    manager.handle_function("block", up)
    # invoke(timeout=) passes: the caller raises TimeoutError, the far handler is cancelled.
    with pytest.raises(TimeoutError):
        await manager.invoke("block", to="cluster-b/agent-1", timeout=0.3)
    await asyncio.wait_for(down.cancelled.wait(), 10)
    with pytest.raises(TimeoutError):
        await agent.invoke("block", timeout=0.3)
    await asyncio.wait_for(up.cancelled.wait(), 10)
    # Cancelling the calling task (a call without a timeout) cancels the far handler: only
    # the Cancel that the relay passes on can do that.
    down.started.clear()
    down.cancelled.clear()
    call = asyncio.create_task(manager.invoke("block", to="cluster-b/agent-1"))
    await asyncio.wait_for(down.started.wait(), 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(down.cancelled.wait(), 10)
    assert await manager.invoke("echo", "still fine", to="cluster-b/agent-1") == "still fine"


#: Heartbeats that let a frozen (SIGSTOP) caller keep its links for the whole test.
PATIENT = {"heartbeat_interval": 0.25, "heartbeat_timeout": 60.0}


@pytest.mark.transports(*SOCKET_TRANSPORTS)  # child processes speak zeromq and tcp only
@pytest.mark.parametrize("direction", ["up", "down"])
async def test_a_call_timeout_travels_through_the_relay_and_ends_the_far_handler(
    transport_kind: str, direction: str, peers: Stack, children: Children
) -> None:
    """The far side enforces the caller's deadline: the caller is frozen, so no Cancel can.

    The caller (a child process) calls with ``timeout=`` and is stopped (SIGSTOP) as soon as
    the handler behind the relay starts. Its links stay up (nobody's heartbeat gives up), so
    neither its own timer nor a lost link can cancel the handler: only the deadline that
    travelled with the call can. The relay forgets the call (it holds at most one here).
    """
    federation = Federation(peers, transport_kind)
    gate, timeout = Gate(), 2.0
    block = {"method": "block", "body": "late", "timeout": timeout}
    if direction == "up":  # an agent calls the manager
        manager = await federation.manager()
        relay = await federation.relay(manager, "cluster-b", max_forwarded=1, **PATIENT)
        manager.handle_function("block", gate)
        caller = await children.start(
            role="peer", identity="agent-1", connect=relay.address, options=PATIENT, invoke=[block]
        )
        witness = await federation.agent(relay, "agent-2")
        await reachable(manager, "cluster-b/agent-1", "cluster-b/agent-2")
    else:  # the manager calls an agent
        block.update(to="cluster-b/agent-1", wait_for="cluster-b/agent-1")
        bind = {"kind": transport_kind}
        caller = await children.start(
            role="peer", identity="manager", bind=bind, options=PATIENT, invoke=[block]
        )
        relay = await federation.relay(caller, "cluster-b", max_forwarded=1, **PATIENT)
        witness = await federation.agent(relay, "agent-1")
        witness.handle_function("block", gate)
    await asyncio.wait_for(gate.started.wait(), 10)
    caller.stop()
    await asyncio.wait_for(gate.cancelled.wait(), 10)  # its deadline, far from the caller
    assert relay.upstream_connected
    if direction == "up":
        assert "cluster-b/agent-1" in manager.peers  # no link was lost on the way
        await until(lambda: manager.statistics().request_errors["RPCCancelledError"] == 1)
        # The relay forgot the call: with max_forwarded=1, the next call through it passes.
        async with asyncio.timeout(10):
            while True:
                try:
                    assert await manager.invoke("echo", "next", to="cluster-b/agent-2") == "next"
                    break
                except cl.OverloadedError:  # the far side's Cancelled is still on its way
                    await asyncio.sleep(0.01)
    else:
        assert relay.peers == {"agent-1"}  # no link was lost on the way
        await until(lambda: witness.statistics().request_errors["RPCCancelledError"] == 1)
    caller.resume()
    # Its own timer and the far side's Cancelled race once it wakes: either is its answer.
    outcome = await caller.line("raised")
    assert outcome.split()[0] in {"RPCTimeoutError", "RPCCancelledError"}, outcome
    if direction == "down":  # the relay forgot the call: with max_forwarded=1, this passes
        assert await witness.invoke("echo", "next") == "next"


async def test_an_execute_timeout_behind_a_relay_is_a_remote_cancellation(
    federation: Federation,
) -> None:
    manager, _relay, agent = await federation.one_agent(execute_timeout=0.2)
    agent.handle_function("block", Gate())
    with pytest.raises(cl.RPCCancelledError, match="execute timeout"):
        await manager.invoke("block", to="cluster-b/agent-1")


def raise_in_agent() -> None:
    raise ValueError("agent says no")


async def test_a_remote_error_arrives_with_its_traceback_unchanged(
    federation: Federation, transport_kind: str, peers: Stack
) -> None:
    async def fail(request: cl.Request) -> Any:
        raise_in_agent()

    # The same failure, directly and through two relays, must read the same.
    direct_server = await peers.enter_async_context(cl.Peer(bind=bind_address(transport_kind)))
    direct = await peers.enter_async_context(cl.Peer(connect=connect_address(direct_server)))
    direct.handle_function("fail", fail)
    with pytest.raises(cl.RPCUserError) as plain:
        await direct_server.invoke("fail")

    manager = await federation.manager()
    top = await federation.relay(manager, "cluster-b")
    agent = await federation.agent(await federation.relay(top, "sub"), "agent-1")
    agent.handle_function("fail", fail)
    await reachable(manager, "cluster-b/sub/agent-1")
    with pytest.raises(cl.RPCUserError) as relayed:
        await manager.invoke("fail", to="cluster-b/sub/agent-1")
    assert (relayed.value.name, relayed.value.repr) == ("ValueError", "ValueError('agent says no')")
    assert relayed.value.traceback == plain.value.traceback
    assert "raise_in_agent" in relayed.value.traceback


async def test_order_keys_hold_end_to_end_and_per_agent(federation: Federation) -> None:
    manager = await federation.manager(ordering=cl.Ordering.SERIALIZED)
    relay = await federation.relay(manager, "cluster-b")
    agent_1 = await federation.agent(relay, "agent-1", ordering=cl.Ordering.SERIALIZED)
    agent_2 = await federation.agent(relay, "agent-2")
    log: list[tuple[str, int]] = []

    async def step(request: cl.Request) -> Any:
        log.append(("start", request.body))
        await asyncio.sleep(0.01 * (5 - request.body))  # later calls would finish first
        log.append(("end", request.body))
        return request.body

    agent_1.handle_function("step", step)
    await reachable(manager, "cluster-b/agent-1")
    calls = [manager.invoke("step", i, order_key="k", to="cluster-b/agent-1") for i in range(5)]
    assert await asyncio.gather(*calls) == list(range(5))
    assert log == [(what, i) for i in range(5) for what in ("start", "end")]

    # Equal keys from two agents behind one relay do not order each other at the manager.
    manager.handle_function("meet", Meeting())
    await reachable(manager, "cluster-b/agent-2")
    assert await asyncio.gather(
        agent_1.invoke("meet", order_key="k"), agent_2.invoke("meet", order_key="k")
    ) == ["cluster-b/agent-1", "cluster-b/agent-2"]


@pytest.mark.transports(*SOCKET_TRANSPORTS)  # child processes speak zeromq and tcp only
async def test_an_agent_dying_fails_exactly_its_calls(
    federation: Federation, children: Children
) -> None:
    manager = await federation.manager()
    relay = await federation.relay(manager, "cluster-b")
    doomed = await children.start(
        role="peer", identity="agent-1", connect=relay.address, options=FAST
    )
    other = await federation.agent(relay, "agent-2")
    gate = Gate()
    other.handle_function("block", gate)
    await reachable(manager, "cluster-b/agent-1", "cluster-b/agent-2")
    calls = {
        name: asyncio.create_task(manager.invoke("block", name, to=f"cluster-b/{name}"))
        for name in ("agent-1", "agent-2")
    }
    assert await doomed.line("started") == '"agent-1"'
    await asyncio.wait_for(gate.started.wait(), 10)
    async with manager.events() as events:
        doomed.kill()  # SIGKILL: no Goodbye, the kernel closes its sockets
        with pytest.raises(cl.PeerDisconnectedError, match="agent-1"):
            await asyncio.wait_for(calls["agent-1"], 10)
        event = await next_event(events)
    assert (event.kind, event.identity) == (DISCONNECTED, "cluster-b/agent-1")
    assert not calls["agent-2"].done()
    assert not gate.cancelled.is_set()
    gate.release.set()
    assert await calls["agent-2"] == "agent-2"
    assert manager.peers == {"cluster-b", "cluster-b/agent-2"}
    assert relay.peers == {"agent-2"}


@pytest.mark.transports(*SOCKET_TRANSPORTS)  # child processes speak zeromq and tcp only
@pytest.mark.parametrize("agent_kind", ["zeromq", "tcp"])
async def test_a_relay_dying_fails_exactly_the_calls_through_it_and_it_comes_back(
    transport_kind: str, agent_kind: str, peers: Stack, children: Children
) -> None:
    """Relay "cluster-a" is a child process, SIGKILLed and started again on the same port.

    The upstream link is on the transport under test, the agents on ``agent_kind``: a ZeroMQ
    DEALER and the TCP transport's reconnect loop both find the restarted relay by themselves.
    """
    federation = Federation(peers, transport_kind)
    agents = Federation(peers, agent_kind)
    manager = await federation.manager()
    relay_a = {"role": "relay", "identity": "cluster-a", "upstream": manager.address}
    doomed = await children.start(bind={"kind": agent_kind}, options=FAST, **relay_a)
    other = await federation.relay(manager, "cluster-b", bind=bind_address(agent_kind))
    agent_a = await agents.agent(doomed, "agent-1")
    agent_b = await agents.agent(other, "agent-1")
    gates = {"cluster-a": Gate(), "cluster-b": Gate()}
    agent_a.handle_function("block", gates["cluster-a"])
    agent_b.handle_function("block", gates["cluster-b"])
    up_gates = {"cluster-a/agent-1": Gate(), "cluster-b/agent-1": Gate()}

    async def block_up(request: cl.Request) -> Any:
        return await up_gates[request.peer_id](request)

    manager.handle_function("block", block_up)
    await reachable(manager, *(f"{relay}/agent-1" for relay in gates))
    calls = {
        relay: asyncio.create_task(manager.invoke("block", relay, to=f"{relay}/agent-1"))
        for relay in gates
    }
    upward = {
        "cluster-a": asyncio.create_task(agent_a.invoke("block", "up")),
        "cluster-b": asyncio.create_task(agent_b.invoke("block", "up")),
    }
    for gate in (*gates.values(), *up_gates.values()):
        await asyncio.wait_for(gate.started.wait(), 10)

    async with manager.events() as events:
        doomed.kill()
        # Both ways, the calls through the dead relay fail for their callers and are
        # cancelled for their handlers.
        with pytest.raises(cl.PeerDisconnectedError):
            await asyncio.wait_for(calls["cluster-a"], 10)
        with pytest.raises(cl.PeerDisconnectedError):
            await asyncio.wait_for(upward["cluster-a"], 10)
        await asyncio.wait_for(gates["cluster-a"].cancelled.wait(), 10)
        await asyncio.wait_for(up_gates["cluster-a/agent-1"].cancelled.wait(), 10)
        gone = set()
        while gone != {"cluster-a", "cluster-a/agent-1"}:
            event = await next_event(events)
            assert (event.kind, event.identity) in {
                (DISCONNECTED, "cluster-a"),
                (DISCONNECTED, "cluster-a/agent-1"),
            }
            gone.add(event.identity)
    assert manager.peers == {"cluster-b", "cluster-b/agent-1"}
    # Those through the other relay go on.
    assert not calls["cluster-b"].done()
    assert not upward["cluster-b"].done()
    gates["cluster-b"].release.set()
    up_gates["cluster-b/agent-1"].release.set()
    assert await calls["cluster-b"] == "cluster-b"
    assert await upward["cluster-b"] == "up"

    # The relay restarts at the same address; its agent reappears by itself.
    port = port_of(doomed.address)
    await children.start(bind={"kind": agent_kind, "port": port}, options=FAST, **relay_a)
    await reachable(manager, "cluster-a/agent-1")
    assert await manager.invoke("echo", "back", to="cluster-a/agent-1") == "back"
    await agent_a.wait_for_peer("cluster-a", timeout=10)
    assert await agent_a.invoke("whoami") == "cluster-a/agent-1"


async def test_the_relay_reconnects_when_the_manager_comes_back(
    transport_kind: str, peers: Stack
) -> None:
    federation = Federation(peers, transport_kind)
    async with contextlib.AsyncExitStack() as first:
        manager = await Federation(first, transport_kind).manager()
        address = connect_address(manager)
        relay = await federation.relay(manager, "cluster-b")
        agent = await federation.agent(relay, "agent-1")
        await reachable(manager, "cluster-b/agent-1")
    # The manager is gone: calls up fail at once, and nothing hangs.
    await until(lambda: not relay.upstream_connected)
    with pytest.raises(cl.PeerDisconnectedError, match="no upstream"):
        await agent.invoke("whoami")
    async with contextlib.AsyncExitStack() as second:
        manager_2 = await open_rebinding(
            lambda: cl.Peer(bind=address, identity="manager-2", **FAST)
        )
        second.push_async_callback(manager_2.aclose)
        manager_2.handle_function("whoami", whoami)
        await manager_2.wait_for_peer("cluster-b/agent-1", timeout=10)
        assert await manager_2.invoke("whoami", to="cluster-b/agent-1") == "cluster-b"
        assert await agent.invoke("whoami") == "cluster-b/agent-1"


async def test_relays_cannot_claim_each_others_agents(federation: Federation) -> None:
    manager = await federation.manager()
    relay_a = await federation.relay(manager, "cluster-a")
    relay_b = await federation.relay(manager, "cluster-b")
    impostor = await federation.relay(relay_b, "cluster-a")  # a nested relay named like a
    await federation.agent(relay_a, "agent-1")
    await federation.agent(impostor, "agent-1")
    await reachable(manager, "cluster-a/agent-1", "cluster-b/cluster-a/agent-1")
    assert manager.peers == {
        "cluster-a",
        "cluster-a/agent-1",
        "cluster-b",
        "cluster-b/cluster-a",
        "cluster-b/cluster-a/agent-1",
    }
    assert await manager.invoke("whoami", to="cluster-a/agent-1") == "cluster-a"
    assert await manager.invoke("whoami", to="cluster-b/cluster-a/agent-1") == "cluster-a"
    assert relay_a.peers == {"agent-1"}


async def test_max_body_size_holds_at_every_hop(federation: Federation) -> None:
    manager = await federation.manager()
    relay = await federation.relay(manager, "cluster-b", max_body_size=10_000)
    agent = await federation.agent(relay, "agent-1")
    await reachable(manager, "cluster-b/agent-1")

    async def big(request: cl.Request) -> Any:
        return b"x" * 50_000

    agent.handle_function("big", big)
    manager.handle_function("big", big)
    with pytest.raises(cl.MessageTooLargeError):  # the relay's limit, checked before sending
        await manager.invoke("echo", b"x" * 20_000, to="cluster-b/agent-1")
    with pytest.raises(cl.MessageTooLargeError):
        await agent.invoke("echo", b"x" * 20_000)
    with pytest.raises(cl.MessageTooLargeError):
        await manager.invoke("big", to="cluster-b/agent-1")
    with pytest.raises(cl.MessageTooLargeError):
        await agent.invoke("big")
    assert await manager.invoke("echo", b"x" * 5_000, to="cluster-b/agent-1") == b"x" * 5_000


async def test_a_relay_holds_a_bounded_number_of_calls(federation: Federation) -> None:
    manager = await federation.manager()
    relay = await federation.relay(manager, "cluster-b", max_forwarded=2)
    agent = await federation.agent(relay, "agent-1")
    gate = Gate()
    agent.handle_function("block", gate)
    await reachable(manager, "cluster-b/agent-1")
    held = [asyncio.create_task(manager.invoke("block", i, to="cluster-b/agent-1")) for i in (1, 2)]
    await asyncio.wait_for(gate.started.wait(), 10)
    with pytest.raises(cl.OverloadedError):
        await manager.invoke("block", 3, to="cluster-b/agent-1")
    gate.release.set()
    assert await asyncio.gather(*held) == [1, 2]


async def test_relay_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="upstream"):
        cl.Relay(bind="tcp://127.0.0.1:0", upstream="nonsense://x")
    with pytest.raises(ValueError, match="reconnect_interval"):
        cl.Relay(bind="tcp://127.0.0.1:0", upstream="tcp://127.0.0.1:1", reconnect_interval=0)
    with pytest.raises(TypeError, match="max_forwarded"):
        cl.Relay(bind="tcp://127.0.0.1:0", upstream="tcp://127.0.0.1:1", max_forwarded=1.5)  # type: ignore[arg-type]


async def test_the_relay_retries_upstream_with_capped_exponential_backoff(peers: Stack) -> None:
    """Each failed upstream attempt doubles the wait before the next, up to the cap.

    The "manager" accepts each connection and hangs up at once, and notes when: one
    connection per attempt of the relay (its TCP transport does not reconnect by itself).
    Waits are only bounded from below (a loaded machine makes them longer, never shorter);
    the cap shows as many attempts within a deadline that doubling alone would need 100 s for.
    """
    loop = asyncio.get_running_loop()
    attempts: list[float] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(loop.time())
        writer.close()

    refusing = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    peers.push_async_callback(refusing.wait_closed)
    peers.callback(refusing.close)
    port = refusing.sockets[0].getsockname()[1]
    interval, cap, count = 0.05, 0.25, 12
    relay = cl.Relay(
        bind=bind_address("tcp"),
        upstream=cl.TCPAddress("127.0.0.1", port),
        upstream_transport=cl.TCPTransport(reconnect=False),
        reconnect_interval=interval,
        max_reconnect_interval=cap,
    )
    async with relay:
        # Capped: about 0.05 + 0.1 + 0.2 + 9 * 0.25 = 2.6 s. Uncapped: 0.05 * (2**11 - 1) s.
        await until(lambda: len(attempts) >= count, timeout=20)
        assert not relay.upstream_connected
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts[:count])]
    waits = [min(interval * 2**k, cap) for k in range(count - 1)]
    assert all(gap >= 0.9 * wait for gap, wait in zip(gaps, waits, strict=True)), (gaps, waits)


async def test_curve_on_both_hops_with_the_relay_scoped_by_its_authenticated_name(
    peers: Stack,
) -> None:
    from callosum_like import auth

    manager_keys, relay_keys, agent_keys = (auth.generate_keypair() for _ in range(3))
    manager = await peers.enter_async_context(
        cl.Peer(
            bind="tcp://127.0.0.1:0",
            identity="manager",
            authenticator=auth.ServerAuthenticator(
                manager_keys, allowed={relay_keys.public: "cluster-b"}
            ),
        )
    )
    manager.handle_function("whoami", whoami)
    relay = await peers.enter_async_context(
        cl.Relay(
            bind="tcp://127.0.0.1:0",
            upstream=manager.address,
            identity="pretends-to-be-cluster-a",  # the manager's authenticator decides
            authenticator=auth.ServerAuthenticator(
                relay_keys, allowed={agent_keys.public: "agent-1"}
            ),
            upstream_authenticator=auth.ClientAuthenticator(
                relay_keys, server_public_key=manager_keys.public
            ),
        )
    )
    await relay.wait_upstream(timeout=10)
    assert relay.identity == "cluster-b"
    agent = await peers.enter_async_context(
        cl.Peer(
            connect=relay.address,
            identity="pretends-to-be-agent-9",
            authenticator=auth.ClientAuthenticator(agent_keys, server_public_key=relay_keys.public),
        )
    )
    agent.handle_function("whoami", whoami)
    await reachable(manager, "cluster-b/agent-1")
    assert manager.peers == {"cluster-b", "cluster-b/agent-1"}
    assert await manager.invoke("whoami", to="cluster-b/agent-1") == "pretends-to-be-cluster-a"
    assert await agent.invoke("whoami") == "cluster-b/agent-1"
    # A stranger with keys of its own gets through neither hop.
    stranger = auth.generate_keypair()
    with pytest.raises(cl.AuthenticationError):
        async with cl.Peer(
            connect=relay.address,
            authenticator=auth.ClientAuthenticator(stranger, server_public_key=relay_keys.public),
        ):
            pass
    assert relay.peers == {"agent-1"}


async def test_a_name_too_long_for_a_route_is_not_passed_on(federation: Federation) -> None:
    manager, relay, _ = await federation.one_agent()
    long_name = "a" * 1100  # identities are not limited; routes are (1024 characters)
    verbose = await federation.agent(relay, long_name)
    await relay.wait_for_peer(long_name, timeout=10)
    with pytest.raises(cl.RPCInternalError, match="longer than 1024"):
        await verbose.invoke("whoami")
    await federation.agent(relay, "agent-2")
    await reachable(manager, "cluster-b/agent-2")  # announced after the long name was skipped
    assert manager.peers == {"cluster-b", "cluster-b/agent-1", "cluster-b/agent-2"}
    assert manager.statistics().dropped_messages == 0  # nothing malformed was sent up


async def test_the_relay_checks_the_next_hops_max_body_size(federation: Federation) -> None:
    # Manager and relay take 64 MiB; the agent only 10 000 bytes. The manager cannot know
    # the agent's limit: the relay refuses on its behalf, both ways.
    manager, _, agent = await federation.one_agent(max_body_size=10_000)

    async def big(request: cl.Request) -> Any:
        return b"x" * 50_000

    manager.handle_function("big", big)
    with pytest.raises(cl.MessageTooLargeError, match="next hop"):
        await manager.invoke("echo", b"x" * 20_000, to="cluster-b/agent-1")
    with pytest.raises(cl.MessageTooLargeError, match="50"):
        await agent.invoke("big")
    assert await manager.invoke("echo", b"x" * 5_000, to="cluster-b/agent-1") == b"x" * 5_000


@pytest.mark.transports(*SOCKET_TRANSPORTS)  # child processes speak zeromq and tcp only
async def test_a_caller_dying_cancels_its_call_beyond_the_relay(
    federation: Federation, children: Children
) -> None:
    manager = await federation.manager()
    relay = await federation.relay(manager, "cluster-b", max_forwarded=1)
    gate = Gate()
    manager.handle_function("block", gate)
    caller = await children.start(
        role="peer",
        identity="agent-1",
        connect=relay.address,
        options=FAST,
        invoke=[{"method": "block", "body": "up"}],
    )
    await asyncio.wait_for(gate.started.wait(), 10)
    caller.kill()
    await asyncio.wait_for(gate.cancelled.wait(), 10)  # the relay cancelled it for the agent
    assert "cluster-b" in manager.peers  # the manager's link to the relay is still up
    # The relay forgot the call: with max_forwarded=1, the next call through it passes.
    agent = await federation.agent(relay, "agent-2")
    assert await agent.invoke("whoami") == "cluster-b/agent-2"


async def test_chunked_bodies_cross_a_relay_both_ways(federation: Federation) -> None:
    manager, _relay, agent = await federation.one_agent(chunk_size=64 * 1024)
    big = bytes(range(256)) * 4096  # 1 MiB: 16 chunks on the agent's hop, 4 on the others
    assert await manager.invoke("echo", big, to="cluster-b/agent-1") == big
    assert await agent.invoke("echo", big) == big


async def test_a_streamed_call_body_is_refused_by_a_relay_not_lost(
    federation: Federation,
) -> None:
    manager, _relay, agent = await federation.one_agent()

    async def items() -> Any:
        yield b"part"

    with pytest.raises(cl.RPCInternalError, match="streamed call bodies"):
        await manager.invoke("echo", items(), to="cluster-b/agent-1", timeout=10)
    with pytest.raises(cl.RPCInternalError, match="streamed call bodies"):
        await agent.invoke("echo", items(), timeout=10)
    assert await manager.invoke("echo", "still fine", to="cluster-b/agent-1") == "still fine"
