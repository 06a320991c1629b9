"""Fairness between remotes over real sockets: a flood does not refuse or starve the others.

A flooding client fills the bound peer's ``max_pending`` and has calls refused; a
well-behaved client calls at the same time. Its calls must all succeed, and each must start
after at most one more of the flooder's queued calls has started (the round-robin turn of
the one other link), however many the flooder has queued. Starts are recorded by the
handler, and the test releases handlers one at a time, so the order is the test's to read,
never a matter of timing. (The latency multiple is measured by hand: docs/guide.md.)
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.errors import ErrorCode
from callosum_like.routing import scoped
from callosum_like.wire import messages as m
from callosum_like.wire.codec import pack_body

from .conftest import bind_address, connect_address, until
from .rawpeer import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

MAX_PENDING = 8
MAX_CONCURRENCY = 2
BURST = 3 * MAX_PENDING  # what the flooder sends at a time: far past max_pending


class Gated:
    """A handler that records each start as ``(caller, n)`` and returns ``n`` once the test
    releases that call."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, Any]] = []
        self.gates: dict[tuple[str, Any], asyncio.Event] = {}
        self.ended: list[tuple[str, Any]] = []
        self.all_open = False

    def gate(self, who: tuple[str, Any]) -> asyncio.Event:
        gate = self.gates.setdefault(who, asyncio.Event())
        if self.all_open:
            gate.set()
        return gate

    def open_all(self) -> None:
        """Release every call, started or to come."""
        self.all_open = True
        for gate in self.gates.values():
            gate.set()

    async def __call__(self, request: cl.Request) -> Any:
        who = (request.peer_id, request.body)
        self.starts.append(who)
        try:
            await self.gate(who).wait()
        finally:
            self.ended.append(who)
        return request.body

    def running(self) -> list[tuple[str, Any]]:
        return [who for who in self.starts if who not in self.ended]

    async def release_oldest(self) -> None:
        """Let the longest-running handler finish, and wait until it has."""
        who = self.running()[0]
        self.gate(who).set()
        await until(lambda: who in self.ended, lambda: f"{who} did not end")


async def outcome(call: Any) -> Any:
    """The result of ``call``, or the exception it raised."""
    try:
        return await call
    except cl.RPCError as exc:
        return exc


def overloaded(results: list[Any]) -> int:
    return sum(isinstance(r, cl.OverloadedError) for r in results)


class Scene:
    """A bound peer with the gated handler, a flooding client and a well-behaved one."""

    def __init__(self, server: cl.Peer, flooder: cl.Peer, good: cl.Peer) -> None:
        self.server, self.flooder, self.good = server, flooder, good
        self.handler = Gated()
        server.handle_function("work", self.handler)
        self.flood_calls: list[asyncio.Task[Any]] = []

    def answered(self) -> list[asyncio.Task[Any]]:
        return [t for t in self.flood_calls if t.done()]

    async def flood(self, round_: int) -> None:
        """Send a burst far past max_pending; return once the pool is full and the rest of
        the burst was refused (the precondition of each round, proven)."""
        refused = self.server.statistics().requests_refused
        before = len(self.answered())
        self.flood_calls += [
            asyncio.create_task(
                outcome(self.flooder.invoke("work", f"{round_}-{n}", order_key=f"k{n % 3}"))
            )
            for n in range(BURST)
        ]
        await until(
            lambda: (
                self.server.statistics().requests_in_flight == MAX_PENDING
                and len(self.answered()) - before >= BURST - MAX_PENDING
            ),
            lambda: f"flood not held: {self.server.statistics()}",
        )
        assert overloaded([t.result() for t in self.answered()[before:]]) >= BURST - MAX_PENDING
        assert self.server.statistics().requests_refused >= refused + BURST - MAX_PENDING
        assert len(self.handler.running()) == MAX_CONCURRENCY  # the rest of the flood waits

    async def good_call(self, round_: int) -> Any:
        """One call of the good client into the full pool: it is admitted, at most one of
        the flood's queued calls starts before it, and it is served."""
        handler, starts, answered = self.handler, len(self.handler.starts), self.answered()
        call = asyncio.create_task(outcome(self.good.invoke("work", round_, order_key="mine")))
        # Admitted: one flood call that had not started made room for it (pushed out).
        await until(
            lambda: call.done() or len(self.answered()) > len(answered),
            lambda: f"the good call was not admitted: {self.server.statistics()}",
        )
        assert not call.done(), f"the good call was answered at once: {call.result()!r}"
        [pushed_out] = [t.result() for t in self.answered() if t not in answered]
        assert isinstance(pushed_out, cl.OverloadedError)
        assert self.server.statistics().requests_in_flight == MAX_PENDING
        assert len(handler.starts) == starts  # nothing started meanwhile
        while ("good", round_) not in handler.starts:  # free one slot at a time
            await handler.release_oldest()
            await until(
                lambda: len(handler.running()) == MAX_CONCURRENCY,
                lambda: "no call started in the freed slot",
            )
        flood_first = [who for who in handler.starts[starts:] if who[0] == "flood"]
        assert len(flood_first) <= 1, f"{flood_first} started before the good call"
        handler.gate(("good", round_)).set()
        return await call


@pytest.mark.parametrize("ordering", list(cl.Ordering))
async def test_a_flooder_neither_refuses_nor_starves_a_well_behaved_remote(
    transport_kind: str,
    peers: contextlib.AsyncExitStack,
    ordering: cl.Ordering,
) -> None:
    """Three rounds: the flooder fills the pool again (refused past it), then the good client
    calls. The flood spreads over three order keys, the good client uses one: under ORDERED
    and SERIALIZED the calls pass through their keys' books too (a pushed-out call is
    answered at once, and leaves its key's order intact)."""
    if transport_kind == "quic" and ordering is not cl.Ordering.UNORDERED:
        # The scene needs the burst's three keys admitted in turn; QUIC delivers each key's
        # calls on its own stream, in any interleaving with the others.
        pytest.skip("the scene assumes the keys of one burst arrive interleaved")
    server = await peers.enter_async_context(
        cl.Peer(
            bind=bind_address(transport_kind),
            max_pending=MAX_PENDING,
            max_concurrency=MAX_CONCURRENCY,
            ordering=ordering,
        )
    )
    address = connect_address(server)
    scene = Scene(
        server,
        await peers.enter_async_context(cl.Peer(connect=address, identity="flood")),
        await peers.enter_async_context(cl.Peer(connect=address, identity="good")),
    )
    good_results = []
    try:
        for round_ in range(3):
            await scene.flood(round_)
            good_results.append(await scene.good_call(round_))
    finally:
        scene.handler.open_all()  # what is left of the flood can finish now
        flood_results = await asyncio.gather(*scene.flood_calls)
    assert good_results == [0, 1, 2]  # no OverloadedError: each served
    assert overloaded(flood_results) >= 3 * (BURST - MAX_PENDING)
    stats = server.statistics()
    assert stats.request_errors["OverloadedError"] == overloaded(flood_results)
    assert stats.requests_refused == overloaded(flood_results)
    assert stats.requests_pushed_out == 3  # one for each good call
    assert stats.requests_in_flight == 0


async def test_a_newcomer_is_admitted_when_the_flood_only_runs(
    transport_kind: str, peers: contextlib.AsyncExitStack, connect_client: Any
) -> None:
    """max_pending below max_concurrency: the flooder's held calls all run, so none can be
    pushed out; the good client's call is admitted past max_pending (within max_pending +
    max_concurrency) instead of refused, and starts in a free slot."""
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), max_pending=2, max_concurrency=4)
    )
    handler = Gated()
    server.handle_function("work", handler)
    flooder = await connect_client(server, identity="flood")
    good = await connect_client(server, identity="good")
    flood = [asyncio.create_task(outcome(flooder.invoke("work", n))) for n in range(6)]
    try:
        await until(lambda: sum(t.done() for t in flood) == 4, lambda: f"{flood}")
        assert overloaded([t.result() for t in flood if t.done()]) == 4  # precondition
        assert len(handler.running()) == 2  # the flood's two held calls, both running
        call = asyncio.create_task(good.invoke("work", "g"))
        await until(lambda: ("good", "g") in handler.starts, lambda: "the good call waits")
        assert server.statistics().requests_in_flight == 3
        handler.gate(("good", "g")).set()
        assert await call == "g"
        assert sum(t.done() for t in flood) == 4  # nothing of the flood was pushed out
        assert server.statistics().requests_pushed_out == 0
    finally:
        handler.open_all()
        await asyncio.gather(*flood)


async def test_callers_behind_one_link_are_fair_to_each_other(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    """One link (as a relay's) carries a flooding caller and a well-behaved one, told apart
    by ``Call.origin``: the second is admitted past the full pool, pushing out one of the
    flooder's queued calls, and starts next but one."""
    server = await peers.enter_async_context(
        cl.Peer(
            bind=bind_address(transport_kind),
            max_pending=MAX_PENDING,
            max_concurrency=MAX_CONCURRENCY,
        )
    )
    handler = Gated()
    server.handle_function("work", handler)
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake("relay")
        for n in range(1, BURST + 1):
            await raw.send(m.Call(id=n, method="work", body=pack_body(n), origin="agent-a"))
        refusals = [await receive(raw) for _ in range(BURST - MAX_PENDING)]
        # Precondition: the pool is full, and the rest of the flood was refused.
        assert all(isinstance(r, m.Error) and r.code == ErrorCode.OVERLOADED for r in refusals)
        assert server.statistics().requests_in_flight == MAX_PENDING

        await raw.send(m.Call(id=1000, method="work", body=pack_body(-1), origin="agent-b"))
        pushed = await receive(raw)
        assert isinstance(pushed, m.Error)
        assert pushed.code == ErrorCode.OVERLOADED
        assert pushed.id == MAX_PENDING  # agent-a's newest call, which had not started
        starts = len(handler.starts)
        agent_b = (scoped("relay", "agent-b"), -1)
        while agent_b not in handler.starts:
            await handler.release_oldest()
            await until(lambda: len(handler.running()) == 2, lambda: "nothing started")
        assert len(handler.starts) - starts <= 2  # one of agent-a's, then agent-b's
        handler.gate(agent_b).set()
        async with asyncio.timeout(10):
            while not isinstance(reply := await receive(raw), m.Result) or reply.id != 1000:
                pass  # agent-a's replies
        assert reply.body == pack_body(-1)
    finally:
        handler.open_all()
        await raw.aclose()


async def receive(raw: RawClient) -> m.Message:
    """The next message that is not a heartbeat."""
    while True:
        msg = await raw.receive(timeout=10)
        if not isinstance(msg, m.Ping | m.Pong):
            return msg


async def test_cancelling_a_queued_serialized_call_keeps_the_key_serialized(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    """Three calls on one key: the second, queued behind the first, is cancelled; the third
    must still wait for the first to finish."""
    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address(transport_kind), ordering=cl.Ordering.SERIALIZED)
    )
    handler = Gated()
    server.handle_function("work", handler)
    client = await peers.enter_async_context(
        cl.Peer(connect=connect_address(server), identity="agent-1")
    )
    first = asyncio.create_task(client.invoke("work", 0, order_key="k"))
    await until(lambda: handler.starts == [("agent-1", 0)], lambda: f"{handler.starts}")
    second = asyncio.create_task(client.invoke("work", 1, order_key="k"))
    third = asyncio.create_task(client.invoke("work", 2, order_key="k"))
    await until(
        lambda: server.statistics().requests_in_flight == 3,
        lambda: f"not all queued: {server.statistics()}",
    )
    second.cancel()
    await until(
        lambda: server.statistics().requests_in_flight == 2,
        lambda: f"the cancel did not arrive: {server.statistics()}",
    )
    # A later positive signal: a call on another key starts and ends meanwhile.
    handler.gate(("agent-1", "other")).set()
    assert await client.invoke("work", "other", order_key="other") == "other"
    assert handler.running() == [("agent-1", 0)], "the third started beside the first"
    handler.gate(("agent-1", 0)).set()
    handler.gate(("agent-1", 2)).set()
    assert list(await asyncio.wait_for(asyncio.gather(first, third), 10)) == [0, 2]
    with pytest.raises(asyncio.CancelledError):
        await second
    assert handler.starts == [("agent-1", 0), ("agent-1", "other"), ("agent-1", 2)]
