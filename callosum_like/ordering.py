"""The three orderings and their pure per-key bookkeeping.

Theory of operation: ordering is decided on the side that *executes*, per
``(calling peer, order_key)``; ``order_key=None`` never orders anything. Two structures do the
bookkeeping, both without I/O, tasks or clocks, so they are tested directly:

* ``ReplyReorder`` (``Ordering.ORDERED``): every request of a key takes a ticket on arrival;
  handlers run concurrently; a finished reply is held until every earlier ticket of the key
  has been released, then released with them in arrival order.
* ``SerialQueue`` (``Ordering.SERIALIZED``): the first request of a key runs; later ones wait
  in arrival order and start one by one as the previous finishes.

Both drop a key's entry as soon as it is idle, so their size is bounded by the requests in
flight (which the dispatcher bounds). The dispatcher is the only caller.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Ordering", "ReplyReorder", "SerialQueue"]

T = TypeVar("T")


class Ordering(enum.Enum):
    """How requests that share an ``order_key`` relate, on the executing side.

    Attributes:
        UNORDERED: Run concurrently; reply as each finishes.
        ORDERED: Run concurrently; replies are released in arrival order.
        SERIALIZED: Run one at a time, in arrival order.
    """

    UNORDERED = "unordered"
    ORDERED = "ordered"
    SERIALIZED = "serialized"


class ReplyReorder(Generic[T]):
    """Releases replies of each key in the order their requests arrived."""

    def __init__(self) -> None:
        # key -> [next ticket to hand out, next ticket to release, finished replies by ticket]
        self._keys: dict[Hashable, tuple[list[int], dict[int, T | None]]] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def arrive(self, key: Hashable) -> int:
        """Register a request of ``key``; return its ticket."""
        counters, _ = self._keys.setdefault(key, ([0, 0], {}))
        ticket = counters[0]
        counters[0] += 1
        return ticket

    def complete(self, key: Hashable, ticket: int, reply: T | None) -> list[T]:
        """Record the outcome of ``ticket``; return the replies now releasable, in order.

        Args:
            key: The order key.
            ticket: The ticket ``arrive`` gave.
            reply: The reply, or ``None`` when the request produced no reply to send (for
                example the caller cancelled it); it still frees its place in the order.

        Raises:
            KeyError: ``key`` has no requests outstanding, or ``ticket`` is unknown or done.
        """
        counters, done = self._keys[key]
        if not counters[1] <= ticket < counters[0] or ticket in done:
            raise KeyError(f"ticket {ticket} of key {key!r} is not outstanding")
        done[ticket] = reply
        released: list[T] = []
        while counters[1] in done:
            item = done.pop(counters[1])
            counters[1] += 1
            if item is not None:
                released.append(item)
        if counters[1] == counters[0]:
            del self._keys[key]
        return released


class SerialQueue(Generic[T]):
    """Runs the requests of each key one at a time, in arrival order."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[T]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def arrive(self, key: Hashable, item: T) -> bool:
        """Register ``item``; return True when it may start now (its key is idle)."""
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = deque()
            return True
        queue.append(item)
        return False

    def finish(self, key: Hashable) -> T | None:
        """The running item of ``key`` finished; return the next one to start, if any.

        Raises:
            KeyError: Nothing of ``key`` is running.
        """
        queue = self._waiting[key]
        if queue:
            return queue.popleft()
        del self._waiting[key]
        return None

    def discard(self, key: Hashable, item: T) -> bool:
        """Remove a waiting ``item`` (its caller cancelled); return whether it was waiting."""
        queue = self._waiting.get(key)
        if queue is None or item not in queue:
            return False
        queue.remove(item)
        return True
