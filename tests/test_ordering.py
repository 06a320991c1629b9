"""The pure per-key bookkeeping of ``Ordering.ORDERED`` and ``Ordering.SERIALIZED``.

No loop, no tasks: ``ReplyReorder`` and ``SerialQueue`` are driven directly, under every
completion order hypothesis can think of, and compared with the obvious model.
"""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callosum_like.ordering import Ordering, ReplyReorder, SerialQueue

pytestmark = pytest.mark.timeout(30)


def test_the_three_orderings() -> None:
    assert {o.name for o in Ordering} == {"UNORDERED", "ORDERED", "SERIALIZED"}


# -- ReplyReorder -------------------------------------------------------------------------------


def contiguous_prefix(done: set[int]) -> int:
    """How many tickets from 0 on are done."""
    n = 0
    while n in done:
        n += 1
    return n


@given(order=st.integers(1, 8).flatmap(lambda n: st.permutations(range(n))))
def test_replies_come_out_in_arrival_order_whatever_the_completion_order(
    order: list[int],
) -> None:
    reorder: ReplyReorder[str] = ReplyReorder()
    tickets = [reorder.arrive("k") for _ in order]
    assert tickets == list(range(len(order)))
    released: list[str] = []
    done: set[int] = set()
    for ticket in order:
        out = reorder.complete("k", ticket, f"reply-{ticket}")
        done.add(ticket)
        released.extend(out)
        # Exactly the replies whose predecessors are all done have come out.
        assert released == [f"reply-{t}" for t in range(contiguous_prefix(done))]
    assert released == [f"reply-{t}" for t in range(len(order))]
    assert len(reorder) == 0


@given(
    order=st.integers(1, 8).flatmap(lambda n: st.permutations(range(n))),
    data=st.data(),
)
def test_none_replies_free_their_slot(order: list[int], data: st.DataObject) -> None:
    silent = data.draw(st.sets(st.sampled_from(order)))
    reorder: ReplyReorder[int] = ReplyReorder()
    for _ in order:
        reorder.arrive("k")
    released: list[int] = []
    for ticket in order:
        released.extend(reorder.complete("k", ticket, None if ticket in silent else ticket))
    assert released == [t for t in range(len(order)) if t not in silent]
    assert len(reorder) == 0


def test_a_held_reply_waits_for_an_earlier_none() -> None:
    reorder: ReplyReorder[str] = ReplyReorder()
    first, second = reorder.arrive("k"), reorder.arrive("k")
    assert reorder.complete("k", second, "b") == []
    assert reorder.complete("k", first, None) == ["b"]


@given(
    arrivals=st.lists(st.sampled_from("abc"), min_size=1, max_size=12),
    data=st.data(),
)
def test_keys_are_independent(arrivals: list[str], data: st.DataObject) -> None:
    reorder: ReplyReorder[tuple[str, int]] = ReplyReorder()
    pending = [(key, reorder.arrive(key)) for key in arrivals]
    order = data.draw(st.permutations(pending))
    released: dict[str, list[int]] = {key: [] for key in arrivals}
    for key, ticket in order:
        for out_key, out_ticket in reorder.complete(key, ticket, (key, ticket)):
            assert out_key == key
            released[key].append(out_ticket)
    for key in released:
        assert released[key] == list(range(arrivals.count(key)))
    assert len(reorder) == 0


def test_a_key_is_dropped_when_idle_and_starts_again_at_zero() -> None:
    reorder: ReplyReorder[str] = ReplyReorder()
    assert len(reorder) == 0
    a0, b0, a1 = reorder.arrive("a"), reorder.arrive("b"), reorder.arrive("a")
    assert len(reorder) == 2
    assert reorder.complete("b", b0, "b0") == ["b0"]
    assert len(reorder) == 1
    assert reorder.complete("a", a0, "a0") == ["a0"]
    assert len(reorder) == 1  # a1 is still outstanding
    assert reorder.complete("a", a1, "a1") == ["a1"]
    assert len(reorder) == 0
    assert reorder.arrive("a") == 0


def test_completing_an_unknown_key_raises_key_error() -> None:
    reorder: ReplyReorder[str] = ReplyReorder()
    with pytest.raises(KeyError):
        reorder.complete("nobody", 0, "x")


@pytest.mark.parametrize("ticket", [-1, 2, 100], ids=["negative", "not handed out", "far"])
def test_completing_a_ticket_never_handed_out_raises_key_error(ticket: int) -> None:
    reorder: ReplyReorder[str] = ReplyReorder()
    reorder.arrive("k")
    reorder.arrive("k")
    with pytest.raises(KeyError):
        reorder.complete("k", ticket, "x")
    assert len(reorder) == 1


def test_completing_a_ticket_twice_raises_key_error() -> None:
    reorder: ReplyReorder[str] = ReplyReorder()
    first, second, _ = reorder.arrive("k"), reorder.arrive("k"), reorder.arrive("k")
    assert reorder.complete("k", second, "held") == []
    with pytest.raises(KeyError):
        reorder.complete("k", second, "again")  # held, not released
    assert reorder.complete("k", first, "first") == ["first", "held"]
    with pytest.raises(KeyError):
        reorder.complete("k", first, "again")  # released


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["arrive", "complete"]), st.sampled_from("ab"), st.integers(0, 20)
        ),
        max_size=40,
    )
)
def test_interleaved_arrivals_and_completions_match_a_model(
    ops: list[tuple[str, str, int]],
) -> None:
    """Arrivals and completions in any interleaving, against a model of the order."""
    reorder: ReplyReorder[int] = ReplyReorder()
    issued: dict[str, list[int]] = {}  # tickets handed out since the key was last idle
    done: dict[str, set[int]] = {}
    released: dict[str, int] = {}  # next ticket to release
    for op, key, pick in ops:
        if op == "arrive":
            ticket = reorder.arrive(key)
            issued.setdefault(key, [])
            assert ticket == len(issued[key])
            issued[key].append(ticket)
            continue
        outstanding = [t for t in issued.get(key, []) if t not in done.get(key, set())]
        if not outstanding:
            continue
        ticket = outstanding[pick % len(outstanding)]
        out = reorder.complete(key, ticket, ticket)
        done.setdefault(key, set()).add(ticket)
        start = released.get(key, 0)
        end = contiguous_prefix(done[key])
        assert out == list(range(start, end))
        released[key] = end
        if end == len(issued[key]):  # idle: the reorder forgets the key, and so do we
            del issued[key], done[key], released[key]
    assert len(reorder) == len(issued)


# -- SerialQueue --------------------------------------------------------------------------------


def test_first_arrival_runs_later_ones_wait_and_start_in_fifo_order() -> None:
    queue: SerialQueue[str] = SerialQueue()
    assert queue.arrive("k", "first") is True
    assert queue.arrive("k", "second") is False
    assert queue.arrive("k", "third") is False
    assert queue.finish("k") == "second"
    assert queue.finish("k") == "third"
    assert len(queue) == 1  # "third" is running
    assert queue.finish("k") is None
    assert len(queue) == 0


def test_serial_keys_are_independent() -> None:
    queue: SerialQueue[str] = SerialQueue()
    assert queue.arrive("a", "a1") is True
    assert queue.arrive("b", "b1") is True
    assert queue.arrive("a", "a2") is False
    assert queue.finish("b") is None
    assert len(queue) == 1
    assert queue.finish("a") == "a2"


def test_discard_removes_a_waiting_item() -> None:
    queue: SerialQueue[str] = SerialQueue()
    queue.arrive("k", "running")
    queue.arrive("k", "w1")
    queue.arrive("k", "w2")
    queue.arrive("k", "w3")
    assert queue.discard("k", "w2") is True
    assert queue.discard("k", "w2") is False
    assert queue.finish("k") == "w1"
    assert queue.finish("k") == "w3"
    assert queue.finish("k") is None
    assert len(queue) == 0


def test_discard_of_what_is_not_waiting_is_false() -> None:
    queue: SerialQueue[str] = SerialQueue()
    assert queue.discard("k", "x") is False  # unknown key
    queue.arrive("k", "running")
    assert queue.discard("k", "running") is False  # running, not waiting
    assert queue.discard("k", "other") is False
    assert len(queue) == 1


def test_finish_of_an_idle_key_raises_key_error() -> None:
    queue: SerialQueue[str] = SerialQueue()
    with pytest.raises(KeyError):
        queue.finish("k")
    queue.arrive("k", "x")
    assert queue.finish("k") is None
    with pytest.raises(KeyError):
        queue.finish("k")


@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["arrive", "finish", "discard"]),
            st.sampled_from("ab"),
            st.integers(0, 10),
        ),
        max_size=40,
    )
)
def test_serial_queue_matches_a_model(ops: list[tuple[str, str, int]]) -> None:
    queue: SerialQueue[int] = SerialQueue()
    model: dict[str, deque[int]] = {}  # key -> waiting items; present while something runs
    running: dict[str, int] = {}
    serial = 0
    for op, key, pick in ops:
        if op == "arrive":
            serial += 1
            starts = queue.arrive(key, serial)
            assert starts == (key not in model)
            if starts:
                model[key] = deque()
                running[key] = serial
            else:
                model[key].append(serial)
        elif op == "finish" and key in model:
            nxt = queue.finish(key)
            if model[key]:
                assert nxt == model[key].popleft()
                running[key] = nxt
            else:
                assert nxt is None
                del model[key], running[key]
        elif op == "discard":
            waiting = list(model.get(key, ()))
            item = waiting[pick % len(waiting)] if waiting else running.get(key, -1)
            assert queue.discard(key, item) == (item in waiting)
            if item in waiting:
                model[key].remove(item)
        assert len(queue) == len(model)
