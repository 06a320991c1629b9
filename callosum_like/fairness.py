"""Fair shares of a serving peer between its remotes: admission and start order.

Theory of operation: the dispatcher holds at most about ``max_pending`` requests and runs at
most ``max_concurrency`` of them. Without fairness one remote that floods fills both, and
every other remote's calls are refused or wait behind the flood. ``FairShares`` keeps the
books that stop that, with no I/O, tasks or clocks, so it is tested directly.

Requests are grouped on two levels: by the **link** they came on, and within a link by their
**origin** (``Call.origin``: the caller behind a relay; ``None`` for the remote itself).
Shares are taken per link first, so a remote cannot claim more by inventing origins, and then
per origin within its link, so the callers behind one relay are fair to each other too.

Admission (``admit``), with ``P = max_pending``, ``C = max_concurrency``, ``n`` the links
holding requests (counting the caller's) and ``share = P // n``:

1. Fewer than ``P`` held in all: admitted (a lone remote may use the whole of ``P``).
2. Otherwise, when the caller's link holds fewer than ``share``, it is admitted, and makes
   room: the newest request not yet started of the link holding the most above ``share`` is
   *pushed out* (the dispatcher answers it ``OVERLOADED``; it never ran, so its caller may
   retry). When every link above its share only has running requests, nothing is pushed out.
3. Otherwise the caller's link already holds its share. Within it, with ``m`` origins holding
   (counting the caller's) and ``sub = link holding // m``: an origin holding fewer than
   ``sub`` takes the place of the newest request not yet started of its sibling holding the
   most above ``sub``. Failing that, the call is refused.

So a link under its share is never refused, and a flooder's own calls are refused once the
pool is full. Bound: at most ``P + C`` requests are held, and more than ``P`` only while the
links above their share hold nothing but running requests (rule 2 admits past ``P`` only
then: those links hold at most ``C``, the others at most ``share`` each, so the total before
the admission is at most ``C + n * share - 1 <= C + P - 1``).

Start order (``ready``, ``start_next``): a request the ordering lets start is *ready*.
Ready requests start round-robin over the links that have some, and within a link
round-robin over its origins; in arrival order within an origin. A ready request of a link
therefore starts after at most one request of each other link, whatever their queues hold.
At most ``C`` requests run at once; ``release`` frees a request's place and its slot.
``admit_running`` is ``admit``, ``ready`` and ``start_next`` in one step for the common case
where they would start the request at once (rule 1 admits it, nothing else is ready, a slot
is free): the dispatcher's path for unordered calls.

Only ``dispatch`` uses this module.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

__all__ = ["Admission", "FairShares"]

T = TypeVar("T", bound=Hashable)
G = TypeVar("G", "_Link[Any]", "_Origin[Any]")


class _State(enum.Enum):
    WAITING = "waiting"  # held; its ordering does not let it start yet
    READY = "ready"  # held; may start when it gets a slot and its turn
    RUNNING = "running"  # holds an execution slot


@dataclass(frozen=True, slots=True)
class Admission(Generic[T]):
    """What ``FairShares.admit`` decided.

    Attributes:
        admitted: Whether the request is held now (otherwise it must be refused).
        pushed_out: A request, never started, that was dropped from the books to make room:
            the caller of ``admit`` answers it as refused.
    """

    admitted: bool
    pushed_out: T | None = None


@dataclass(eq=False, slots=True)
class _Origin(Generic[T]):
    """The requests of one origin on one link."""

    held: int = 0
    #: Held and not started, in arrival order (push-out takes the newest).
    unstarted: OrderedDict[T, None] = field(default_factory=OrderedDict)
    #: Ready to start, in the order they became ready.
    ready: OrderedDict[T, None] = field(default_factory=OrderedDict)


@dataclass(eq=False, slots=True)
class _Link(Generic[T]):
    """The requests of one link, by origin."""

    held: int = 0
    unstarted: int = 0  # of all its origins
    origins: dict[Hashable, _Origin[T]] = field(default_factory=dict)  # those holding some
    turns: OrderedDict[Hashable, None] = field(default_factory=OrderedDict)  # those ready


@dataclass(slots=True)
class _Entry:
    link: Hashable
    origin: Hashable
    state: _State = _State.WAITING


class FairShares(Generic[T]):
    """The admission and start books of one dispatcher (see the module doc for the rules).

    Args:
        max_pending: ``P``: requests held at once before the shares apply.
        max_concurrency: ``C``: requests running at once.
    """

    def __init__(self, max_pending: int, max_concurrency: int) -> None:
        self._max_pending = max_pending
        self._max_concurrency = max_concurrency
        self._links: dict[Hashable, _Link[T]] = {}
        self._turns: OrderedDict[Hashable, None] = OrderedDict()  # links with ready requests
        self._entries: dict[T, _Entry] = {}
        self._running = 0

    @property
    def held(self) -> int:
        """Requests held: waiting, ready or running."""
        return len(self._entries)

    @property
    def running(self) -> int:
        """Requests holding an execution slot (at most ``max_concurrency``)."""
        return self._running

    def held_by(self, link: Hashable) -> int:
        """Requests held from ``link``."""
        group = self._links.get(link)
        return 0 if group is None else group.held

    # -- admission ----------------------------------------------------------------------------

    def admit(self, link: Hashable, origin: Hashable, item: T) -> Admission[T]:
        """Decide on a new request ``item`` from ``origin`` on ``link``; hold it if admitted.

        An admitted request waits until ``ready`` says its ordering lets it start.

        Raises:
            ValueError: ``item`` is already held.
        """
        if item in self._entries:
            raise ValueError(f"{item!r} is already held")
        pushed_out = None
        if len(self._entries) >= self._max_pending:
            verdict = self._make_room(link, origin)
            if isinstance(verdict, _Refused):
                return Admission(admitted=False)
            pushed_out = verdict
            if pushed_out is not None:
                self.release(pushed_out)
        linked = self._links.setdefault(link, _Link())
        group = linked.origins.setdefault(origin, _Origin())
        linked.held += 1
        group.held += 1
        linked.unstarted += 1
        group.unstarted[item] = None
        self._entries[item] = _Entry(link, origin)
        return Admission(admitted=True, pushed_out=pushed_out)

    def admit_running(self, link: Hashable, origin: Hashable, item: T) -> bool:
        """Admit ``item`` and start it at once, if ``admit``, ``ready`` and ``start_next`` would.

        That is when rule 1 admits it, nothing else is ready and a slot is free: the common
        case of a serving peer that keeps up, in one step and without the queues.

        Returns:
            Whether ``item`` now runs; if not, nothing was held (use ``admit``).
        """
        if (
            self._turns
            or self._running >= self._max_concurrency
            or len(self._entries) >= self._max_pending
            or item in self._entries
        ):
            return False
        linked = self._links.get(link)
        if linked is None:
            self._links[link] = linked = _Link()
        group = linked.origins.get(origin)
        if group is None:
            linked.origins[origin] = group = _Origin()
        linked.held += 1
        group.held += 1
        self._entries[item] = _Entry(link, origin, _State.RUNNING)
        self._running += 1
        return True

    @property
    def startable(self) -> bool:
        """Whether ``start_next`` would start a request now."""
        return bool(self._turns) and self._running < self._max_concurrency

    def _make_room(self, link: Hashable, origin: Hashable) -> T | _Refused | None:
        """With the pool full, apply rules 2 and 3 of the module doc to a new request.

        Returns:
            The request to push out for it, ``None`` to admit it without, or ``REFUSED``.
        """
        linked = self._links.get(link)
        if linked is None:
            linked = _Link()  # holds nothing yet; counts as one more link
            share = self._max_pending // (len(self._links) + 1)
        else:
            share = self._max_pending // len(self._links)
        if linked.held < share:
            over = (g for key, g in self._links.items() if key != link and g.held > share)
            victim = _most(g for g in over if g.unstarted)
            if victim is None:
                return None  # everything above its share runs: admit past max_pending
            return _newest_unstarted(victim.origins.values())
        group = linked.origins.get(origin)
        mine = 0 if group is None else group.held
        sub = linked.held // (len(linked.origins) + (group is None))
        if mine < sub:
            siblings = (g for key, g in linked.origins.items() if key != origin)
            victim_item = _newest_unstarted(g for g in siblings if g.held > sub)
            if victim_item is not None:
                return victim_item
        return REFUSED

    # -- starting -----------------------------------------------------------------------------

    def ready(self, item: T) -> None:
        """``item``'s ordering lets it start: queue it for a slot and its turn.

        Raises:
            KeyError: ``item`` is not held.
            ValueError: ``item`` is already ready or running.
        """
        entry = self._entries[item]
        if entry.state is not _State.WAITING:
            raise ValueError(f"{item!r} is {entry.state.value}, not waiting")
        entry.state = _State.READY
        linked = self._links[entry.link]
        linked.origins[entry.origin].ready[item] = None
        linked.turns.setdefault(entry.origin)
        self._turns.setdefault(entry.link)

    def start_next(self) -> T | None:
        """Mark the ready request whose turn it is as running, and return it.

        Returns:
            That request, or ``None`` when no slot is free or nothing is ready.
        """
        if self._running >= self._max_concurrency or not self._turns:
            return None
        link = next(iter(self._turns))
        linked = self._links[link]
        origin = next(iter(linked.turns))
        group = linked.origins[origin]
        item, _ = group.ready.popitem(last=False)
        del group.unstarted[item]
        linked.unstarted -= 1
        self._entries[item].state = _State.RUNNING
        self._running += 1
        _next_turn(linked.turns, origin, more=bool(group.ready))
        _next_turn(self._turns, link, more=bool(linked.turns))
        return item

    def release(self, item: T) -> None:
        """``item`` is done, or dropped: free its place and its slot.

        An item not held (released already, or pushed out) is ignored.
        """
        entry = self._entries.pop(item, None)
        if entry is None:
            return
        linked = self._links[entry.link]
        group = linked.origins[entry.origin]
        if entry.state is _State.RUNNING:
            self._running -= 1
        else:
            del group.unstarted[item]
            linked.unstarted -= 1
        if entry.state is _State.READY:
            del group.ready[item]
            if not group.ready:  # out of the rounds it has no more turns in
                del linked.turns[entry.origin]
                if not linked.turns:
                    del self._turns[entry.link]
        group.held -= 1
        linked.held -= 1
        if not group.held:
            del linked.origins[entry.origin]
        if not linked.held:
            del self._links[entry.link]


class _Refused(enum.Enum):
    """The marker of a call to refuse (an enum, so that type checkers narrow on it)."""

    REFUSED = "refused"


REFUSED: Final = _Refused.REFUSED


def _most(groups: Iterable[G]) -> G | None:
    """The group holding the most among ``groups`` (the first of equals), if any."""
    return max(groups, key=lambda g: g.held, default=None)


def _newest_unstarted(origins: Iterable[_Origin[T]]) -> T | None:
    """The newest request not started of the largest of ``origins`` with one, if any."""
    largest = _most(g for g in origins if g.unstarted)
    return None if largest is None else next(reversed(largest.unstarted))


def _next_turn(turns: OrderedDict[Hashable, None], key: Hashable, *, more: bool) -> None:
    """After ``key`` had its turn: to the back of the round if it has ``more``, else out."""
    if more:
        turns.move_to_end(key)
    else:
        del turns[key]
