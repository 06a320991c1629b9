"""Orderings over real sockets, proven from recorded events, never from wall-clock thresholds.

Each handler records ``("start", n)``, waits for its own gate (opened by the test), then
records ``("end", n)``. The test opens gates in *reverse* arrival order: concurrent
handlers then finish in reverse, serialized ones cannot.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import callosum_like as cl

from .conftest import PairFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


class Recorder:
    def __init__(self, count: int) -> None:
        self.events: list[tuple[str, int]] = []
        self.gates = [asyncio.Event() for _ in range(count)]
        self.running = 0
        self.max_running = 0

    async def handler(self, request: cl.Request) -> Any:
        n = request.body
        self.events.append(("start", n))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gates[n].wait()
        finally:
            self.running -= 1
        self.events.append(("end", n))
        return n

    def running_now(self) -> set[int]:
        """The handlers started and not yet ended."""
        started = {n for kind, n in self.events if kind == "start"}
        return started - {n for kind, n in self.events if kind == "end"}

    async def wait_started(self, count: int) -> None:
        async with asyncio.timeout(5):
            while sum(1 for kind, _ in self.events if kind == "start") < count:
                await asyncio.sleep(0.005)

    async def open_in_reverse(self, settle: float = 0.05) -> None:
        # Yield between gates, so a handler that may finish has the chance to.
        for gate in reversed(self.gates):
            gate.set()
            await asyncio.sleep(settle)


async def run_burst(
    client: cl.Peer, recorder: Recorder, count: int, key: str | None, *, started: int
) -> list[int]:
    """Issue ``count`` calls in order; return the order in which their replies arrived."""
    replies: list[int] = []

    async def call(n: int) -> None:
        replies.append(await client.invoke("work", n, order_key=key))

    tasks = []
    for n in range(count):
        tasks.append(asyncio.create_task(call(n)))
        await asyncio.sleep(0.01)  # arrival order = n
    await recorder.wait_started(started)
    await recorder.open_in_reverse()
    await asyncio.gather(*tasks)
    return replies


def overlapped(events: list[tuple[str, int]]) -> bool:
    """Whether some handler started before an earlier one ended."""
    first_end = events.index(("end", 0)) if ("end", 0) in events else len(events)
    return any(kind == "start" and n > 0 for kind, n in events[:first_end])


async def test_unordered_runs_concurrently_and_replies_as_each_finishes(
    make_pair: PairFactory,
) -> None:
    server, client = await make_pair(ordering=cl.Ordering.UNORDERED)
    rec = Recorder(3)
    server.handle_function("work", rec.handler)
    replies = await run_burst(client, rec, 3, "k", started=3)
    assert overlapped(rec.events)
    assert replies == [2, 1, 0]


async def test_ordered_runs_concurrently_and_replies_in_arrival_order(
    make_pair: PairFactory,
) -> None:
    server, client = await make_pair(ordering=cl.Ordering.ORDERED)
    rec = Recorder(3)
    server.handle_function("work", rec.handler)
    replies = await run_burst(client, rec, 3, "k", started=3)
    assert overlapped(rec.events)
    assert [n for kind, n in rec.events if kind == "end"] == [2, 1, 0]  # finished in reverse
    assert replies == [0, 1, 2]  # released in arrival order


async def test_serialized_runs_one_at_a_time_in_arrival_order(make_pair: PairFactory) -> None:
    server, client = await make_pair(ordering=cl.Ordering.SERIALIZED)
    rec = Recorder(3)
    server.handle_function("work", rec.handler)
    replies = await run_burst(client, rec, 3, "k", started=1)
    assert rec.events == [
        ("start", 0),
        ("end", 0),
        ("start", 1),
        ("end", 1),
        ("start", 2),
        ("end", 2),
    ]
    assert replies == [0, 1, 2]


@pytest.mark.parametrize("ordering", [cl.Ordering.ORDERED, cl.Ordering.SERIALIZED])
async def test_order_key_none_orders_nothing(make_pair: PairFactory, ordering: cl.Ordering) -> None:
    server, client = await make_pair(ordering=ordering)
    rec = Recorder(3)
    server.handle_function("work", rec.handler)
    replies = await run_burst(client, rec, 3, None, started=3)
    assert overlapped(rec.events)
    assert replies == [2, 1, 0]


async def test_serialized_different_keys_run_concurrently(make_pair: PairFactory) -> None:
    server, client = await make_pair(ordering=cl.Ordering.SERIALIZED)
    rec = Recorder(2)
    server.handle_function("work", rec.handler)
    tasks = [asyncio.create_task(client.invoke("work", n, order_key=f"k{n}")) for n in range(2)]
    await rec.wait_started(2)
    await rec.open_in_reverse()
    assert await asyncio.gather(*tasks) == [0, 1]
    assert overlapped(rec.events)


async def test_order_keys_are_scoped_per_calling_peer(
    make_pair: PairFactory, connect_client: Any
) -> None:
    server, client = await make_pair(ordering=cl.Ordering.SERIALIZED)
    other = await connect_client(server, identity="agent-2")
    rec = Recorder(2)
    server.handle_function("work", rec.handler)
    first = asyncio.create_task(client.invoke("work", 0, order_key="same"))
    await rec.wait_started(1)
    second = asyncio.create_task(other.invoke("work", 1, order_key="same"))
    await rec.wait_started(2)  # would time out if the key were shared across peers
    await rec.open_in_reverse()
    assert await asyncio.gather(first, second) == [0, 1]


async def test_per_method_ordering_overrides_the_default(make_pair: PairFactory) -> None:
    server, client = await make_pair(ordering=cl.Ordering.UNORDERED)
    rec = Recorder(3)
    server.handle_function("work", rec.handler, ordering=cl.Ordering.SERIALIZED)
    replies = await run_burst(client, rec, 3, "k", started=1)
    assert not overlapped(rec.events)
    assert replies == [0, 1, 2]


def runnable(ordering: cl.Ordering, keys: list[str | None], done: set[int]) -> list[int]:
    """The calls that may run now by the ordering's rules, ignoring the concurrency cap."""
    waiting = [n for n in range(len(keys)) if n not in done]
    if ordering is not cl.Ordering.SERIALIZED:
        return waiting
    heads: dict[str | None, int] = {}  # the earliest call still waiting, per key
    for n in waiting:
        heads.setdefault(keys[n], n)
    return [n for n in waiting if keys[n] is None or heads[keys[n]] == n]


@pytest.mark.parametrize("ordering", list(cl.Ordering))
async def test_max_concurrency_caps_running_handlers_and_keeps_guarantees(
    make_pair: PairFactory, ordering: cl.Ordering
) -> None:
    """Six calls, the odd ones on one key, at most two running: the test releases handlers
    one at a time, unkeyed ones first and the latest keyed one next, so keyed handlers that
    run together finish in reverse; after each release it waits until as many handlers run
    as the ordering's rules and the cap allow, and checks that only allowed ones do."""
    cap, count = 2, 6
    keys = ["k" if n % 2 else None for n in range(count)]
    server, client = await make_pair(ordering=ordering, max_concurrency=cap)
    rec = Recorder(count)
    server.handle_function("work", rec.handler)
    replies: list[int] = []

    async def call(n: int) -> None:
        replies.append(await client.invoke("work", n, order_key=keys[n]))

    tasks = [asyncio.create_task(call(n)) for n in range(count)]  # sent in this order
    done: set[int] = set()
    async with asyncio.timeout(10):
        while len(done) < count:
            allowed = runnable(ordering, keys, done)
            while len(running := rec.running_now()) < min(cap, len(allowed)):
                await asyncio.sleep(0.005)
            assert running <= set(allowed), f"{sorted(running)} run, only {allowed} may"
            unkeyed = [n for n in running if keys[n] is None]
            n = max(unkeyed or running)
            rec.gates[n].set()
            while ("end", n) not in rec.events:
                await asyncio.sleep(0.005)
            done.add(n)
        await asyncio.gather(*tasks)
    assert rec.max_running <= cap
    ends = [n for kind, n in rec.events if kind == "end"]
    keyed_ends = [n for n in ends if keys[n] is not None]
    keyed_replies = [n for n in replies if keys[n] is not None]
    if ordering is cl.Ordering.UNORDERED:
        assert replies == ends  # each reply as its handler finished
        assert keyed_replies != sorted(keyed_replies)  # so the key's replies came out of order
    elif ordering is cl.Ordering.ORDERED:
        assert keyed_ends != sorted(keyed_ends)  # handlers of the key finished out of order,
        assert keyed_replies == sorted(keyed_replies)  # yet their replies came in order
        assert [n for n in replies if keys[n] is None] == [n for n in ends if keys[n] is None]
    else:
        assert keyed_ends == sorted(keyed_ends)
        keyed_events = [(kind, n) for kind, n in rec.events if keys[n] is not None]
        assert keyed_events == [(kind, n) for n in sorted(keyed_ends) for kind in ("start", "end")]


async def test_ordered_with_a_cancelled_call_releases_the_rest(make_pair: PairFactory) -> None:
    server, client = await make_pair(ordering=cl.Ordering.ORDERED)
    rec = Recorder(3)
    server.handle_function("work", rec.handler)
    tasks = []
    for n in range(3):
        tasks.append(asyncio.create_task(client.invoke("work", n, order_key="k")))
        await asyncio.sleep(0.01)
    await rec.wait_started(3)
    tasks[0].cancel()  # the head of the order goes away: the others must not wait for it
    rec.gates[1].set()
    rec.gates[2].set()
    assert await asyncio.gather(tasks[1], tasks[2]) == [1, 2]
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
