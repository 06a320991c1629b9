"""The fair-share books of the serving side, driven directly (no loop, no sockets).

The expected answers come from the rules of docs/guide.md ("Fairness between remotes"),
written out here against a model the test keeps itself: who holds what, what started, in
which order requests became ready. The books are only asked, never read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from callosum_like.fairness import Admission, FairShares

pytestmark = pytest.mark.timeout(120)

LINKS = ["a", "b", "c"]
ORIGINS = [None, "x", "y"]


@dataclass(eq=False)
class Req:
    link: str
    origin: str | None
    number: int  # arrival order
    state: str = "waiting"  # "ready", "running"
    ready_at: int = -1  # the order it became ready in


class Model:
    """What the books should hold, by the rules, kept apart from the code under test."""

    def __init__(self, max_pending: int, max_concurrency: int) -> None:
        self.p = max_pending
        self.c = max_concurrency
        self.held: list[Req] = []

    def of_link(self, link: str) -> list[Req]:
        return [r for r in self.held if r.link == link]

    def links(self) -> set[str]:
        return {r.link for r in self.held}

    def expected(self, link: str, origin: str | None) -> tuple[str, list[Req]]:
        """("admit" | "refuse", the requests one of which must be pushed out)."""
        if len(self.held) < self.p:
            return "admit", []
        share = self.p // len(self.links() | {link})
        mine = self.of_link(link)
        if len(mine) < share:
            over = [k for k in self.links() - {link} if len(self.of_link(k)) > share]
            return "admit", victims(self, over, lambda r, k: r.link == k)
        sub = len(mine) // len({r.origin for r in mine} | {origin})
        if sum(r.origin == origin for r in mine) < sub:
            siblings = {r.origin for r in mine} - {origin}
            over_sub = [o for o in siblings if sum(r.origin == o for r in mine) > sub]
            candidates = victims(self, over_sub, lambda r, o: r.link == link and r.origin == o)
            if candidates:
                return "admit", candidates
        return "refuse", []


def victims(model: Model, groups: list[Any], member: Callable[[Req, Any], bool]) -> list[Req]:
    """The requests that may be pushed out: of the groups (links over their share, or
    origins over theirs) that have one not started, one holding the most; within it (for a
    link: of its origins with one not started, one holding the most) its newest not
    started. Ties allow any of the equals."""
    held = model.held

    def unstarted(rs: list[Req]) -> list[Req]:
        return [r for r in rs if r.state != "running"]

    by_group = {g: [r for r in held if member(r, g)] for g in groups}
    with_any = {g: rs for g, rs in by_group.items() if unstarted(rs)}
    if not with_any:
        return []
    most = max(len(rs) for rs in with_any.values())
    out: list[Req] = []
    for rs in with_any.values():
        if len(rs) != most:
            continue
        by_origin: dict[str | None, list[Req]] = {}
        for r in rs:
            by_origin.setdefault(r.origin, []).append(r)
        fit = {o: g for o, g in by_origin.items() if unstarted(g)}
        top = max(len(g) for g in fit.values())
        out += [max(unstarted(g), key=lambda r: r.number) for g in fit.values() if len(g) == top]
    return out


class FairSharesMachine(RuleBasedStateMachine):
    """Arrivals, readiness, starts, ends and cancellations in any order, checked each step."""

    def __init__(self) -> None:
        super().__init__()
        self.numbers = itertools.count()
        self.since_link: dict[str, set[str]] = {}
        self.since_origin: dict[tuple[str, str | None], set[str | None]] = {}

    @initialize(p=st.integers(1, 6), c=st.integers(1, 6))
    def setup(self, p: int, c: int) -> None:
        self.books: FairShares[Req] = FairShares(p, c)
        self.model = Model(p, c)

    # -- rules --------------------------------------------------------------------------------

    @rule(link=st.sampled_from(LINKS), origin=st.sampled_from(ORIGINS))
    def arrive(self, link: str, origin: str | None) -> None:
        req = Req(link, origin, next(self.numbers))
        verdict, candidates = self.model.expected(link, origin)
        before = self.ready_links(), self.ready_origins()
        got: Admission[Req] = self.books.admit(link, origin, req)
        assert got.admitted == (verdict == "admit"), (verdict, got)
        if not got.admitted:
            event("refused")
            return
        if candidates:
            assert got.pushed_out in candidates
            event("pushed out")
            self.model.held.remove(got.pushed_out)
        else:
            assert got.pushed_out is None
        if len(self.model.held) >= self.model.p:
            event("admitted past max_pending")
        self.model.held.append(req)
        self.after_ready_change(before)

    @rule(link=st.sampled_from(LINKS), origin=st.sampled_from(ORIGINS))
    def arrive_running(self, link: str, origin: str | None) -> None:
        """The fast path: admitted and started at once exactly when nothing else could start
        first and rule 1 admits it; otherwise nothing changes (``admit`` follows)."""
        req = Req(link, origin, next(self.numbers))
        held = self.model.held
        may = (
            not any(r.state == "ready" for r in held)
            and sum(r.state == "running" for r in held) < self.model.c
            and len(held) < self.model.p
        )
        assert self.books.admit_running(link, origin, req) == may
        if may:
            event("started at once")
            req.state = "running"
            held.append(req)

    @precondition(lambda self: any(r.state == "waiting" for r in self.model.held))
    @rule(data=st.data())
    def make_ready(self, data: st.DataObject) -> None:
        self.ready(data.draw(st.sampled_from([r for r in self.model.held if r.state == "waiting"])))

    @precondition(lambda self: any(r.state == "waiting" for r in self.model.held))
    @rule()
    def make_all_ready(self) -> None:
        for req in [r for r in self.model.held if r.state == "waiting"]:
            self.ready(req)

    def ready(self, req: Req) -> None:
        before = self.ready_links(), self.ready_origins()
        self.books.ready(req)
        req.state = "ready"
        req.ready_at = next(self.numbers)
        self.after_ready_change(before)

    @rule()
    def start(self) -> None:
        ready = [r for r in self.model.held if r.state == "ready"]
        running = sum(r.state == "running" for r in self.model.held)
        got = self.books.start_next()
        if running >= self.model.c or not ready:
            assert got is None
            return
        assert got is not None
        assert got.state == "ready"
        # First come, first started within an origin.
        same = [r for r in ready if (r.link, r.origin) == (got.link, got.origin)]
        assert got is min(same, key=lambda r: r.ready_at)
        # Round-robin: while a link has ready requests, no other link starts twice before it
        # starts once; the same between the origins of one link.
        for link, started in self.since_link.items():
            if link != got.link:
                assert got.link not in started, f"{got.link} started twice while {link} waited"
                started.add(got.link)
        self.since_link[got.link] = set()
        for (link, origin), siblings in self.since_origin.items():
            if link == got.link and origin != got.origin:
                assert got.origin not in siblings, "an origin started twice while a sibling waited"
                siblings.add(got.origin)
        self.since_origin[got.link, got.origin] = set()
        before = self.ready_links(), self.ready_origins()
        got.state = "running"
        self.after_ready_change(before)

    @precondition(lambda self: any(r.state == "running" for r in self.model.held))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        req = data.draw(st.sampled_from([r for r in self.model.held if r.state == "running"]))
        self.books.release(req)
        self.model.held.remove(req)

    @precondition(lambda self: any(r.state != "running" for r in self.model.held))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        req = data.draw(st.sampled_from([r for r in self.model.held if r.state != "running"]))
        before = self.ready_links(), self.ready_origins()
        self.books.release(req)
        self.books.release(req)  # twice: the second is ignored
        self.model.held.remove(req)
        self.after_ready_change(before)

    # -- the round-robin record -----------------------------------------------------------------

    def ready_links(self) -> set[str]:
        return {r.link for r in self.model.held if r.state == "ready"}

    def ready_origins(self) -> set[tuple[str, str | None]]:
        return {(r.link, r.origin) for r in self.model.held if r.state == "ready"}

    def after_ready_change(self, before: tuple[set[str], set[tuple[str, str | None]]]) -> None:
        """A link (an origin) that has just got ready requests starts a fresh record; one that
        has none left drops its record."""
        links, origins = self.ready_links(), self.ready_origins()
        for link in links - before[0]:
            self.since_link[link] = set()
        for link in before[0] - links:
            del self.since_link[link]
        for origin in origins - before[1]:
            self.since_origin[origin] = set()
        for origin in before[1] - origins:
            del self.since_origin[origin]

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        assert self.books.held == len(self.model.held)
        assert self.books.running == sum(r.state == "running" for r in self.model.held)
        for link in LINKS:
            assert self.books.held_by(link) == len(self.model.of_link(link))

    @invariant()
    def startable_when_a_slot_and_a_ready_request(self) -> None:
        held = self.model.held
        running = sum(r.state == "running" for r in held)
        ready = any(r.state == "ready" for r in held)
        assert self.books.startable == (ready and running < self.model.c)

    @invariant()
    def bounded(self) -> None:
        assert self.books.held <= self.model.p + self.model.c
        assert self.books.running <= self.model.c


TestFairShares = FairSharesMachine.TestCase
TestFairShares.settings = settings(max_examples=500, stateful_step_count=60, deadline=None)


# -- the cases the issue names, one by one ------------------------------------------------------


def test_a_flooder_fills_the_pool_alone_then_yields_to_a_newcomer() -> None:
    books: FairShares[str] = FairShares(max_pending=4, max_concurrency=1)
    for n in range(4):
        assert books.admit("flood", None, f"f{n}") == Admission(admitted=True)
    assert books.admit("flood", None, "f4") == Admission(admitted=False)  # it had it all
    got = books.admit("good", None, "g0")
    assert got == Admission(admitted=True, pushed_out="f3")  # the flooder's newest
    assert books.held == 4
    assert books.admit("good", None, "g1") == Admission(admitted=True, pushed_out="f2")
    assert books.admit("good", None, "g2") == Admission(admitted=False)  # at its share, 2
    assert books.admit("flood", None, "f5") == Admission(admitted=False)  # at its share too


def test_a_running_request_is_never_pushed_out() -> None:
    """Over its share with all its requests running, a link is not touched: the newcomer is
    admitted past max_pending instead, within max_pending + max_concurrency."""
    books: FairShares[str] = FairShares(max_pending=2, max_concurrency=2)
    for name in ("f0", "f1"):
        books.admit("flood", None, name)
        books.ready(name)
    assert [books.start_next(), books.start_next()] == ["f0", "f1"]
    assert books.admit("flood", None, "f2") == Admission(admitted=False)
    assert books.admit("good", None, "g0") == Admission(admitted=True)
    assert books.held == 3  # max_pending + 1
    assert books.admit("good", None, "g1") == Admission(admitted=False)  # its share is 1


def test_origins_share_their_links_share_and_cannot_claim_more() -> None:
    """Behind one link (a relay), a caller under its part of the link's holding takes the
    place of a sibling's; inventing origins does not win a link more than its share."""
    books: FairShares[str] = FairShares(max_pending=6, max_concurrency=1)
    for n in range(6):
        books.admit("relay", "agent-1", f"r{n}")
    assert books.admit("relay", "agent-2", "s0") == Admission(admitted=True, pushed_out="r5")
    assert books.admit("direct", None, "d0") == Admission(admitted=True, pushed_out="r4")
    assert books.admit("direct", None, "d1") == Admission(admitted=True, pushed_out="r3")
    assert books.admit("direct", None, "d2") == Admission(admitted=True, pushed_out="r2")
    # The relay now holds its share, 3. A new origin on it may take a sibling's place,
    # never the other link's: the link's holding stays at its share.
    assert books.held_by("relay") == 3
    assert books.admit("relay", "agent-3", "t0") == Admission(admitted=True, pushed_out="r1")
    assert books.held_by("relay") == 3
    assert books.admit("relay", "agent-4", "u0") == Admission(admitted=False)
    assert books.admit("direct", None, "d3") == Admission(admitted=False)


def test_starts_take_turns_between_links_then_origins() -> None:
    books: FairShares[str] = FairShares(max_pending=100, max_concurrency=100)
    names = [f"f{n}" for n in range(6)] + ["g0", "g1"] + ["x0", "y0", "x1"]
    places = {"f": ("flood", None), "g": ("good", None), "x": ("relay", "x"), "y": ("relay", "y")}
    for name in names:
        books.admit(*places[name[0]], name)
        books.ready(name)
    order = [books.start_next() for _ in names]
    assert order == ["f0", "g0", "x0", "f1", "g1", "y0", "f2", "x1", "f3", "f4", "f5"]
    assert books.start_next() is None


def test_no_more_than_max_concurrency_start() -> None:
    books: FairShares[int] = FairShares(max_pending=10, max_concurrency=2)
    for n in range(3):
        books.admit("a", None, n)
        books.ready(n)
    assert [books.start_next(), books.start_next(), books.start_next()] == [0, 1, None]
    books.release(0)
    assert books.start_next() == 2


def test_misuse_is_refused() -> None:
    books: FairShares[int] = FairShares(max_pending=10, max_concurrency=2)
    books.admit("a", None, 1)
    with pytest.raises(ValueError, match="already held"):
        books.admit("a", None, 1)
    books.ready(1)
    with pytest.raises(ValueError, match="not waiting"):
        books.ready(1)
    with pytest.raises(KeyError):
        books.ready(2)
