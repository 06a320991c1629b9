"""A bounded first-in first-out line that holds each item until its arrival time plus a delay.

Theory of operation: the forwarder keeps one ``DelayLine`` per direction of each relayed TCP
connection or UDP flow. The reading side stamps each chunk or datagram with its *due* time
(arrival plus the delay in force at arrival) as it puts it in; the writing side takes items
out in the order they came, each no earlier than its due time. Items never overtake each
other: when the delay shrinks, a later item may be due before an earlier one, and it waits
behind it (a byte stream cannot reorder; for datagrams it keeps the bed free of reordering).

The line is bounded in bytes (``limit``): a TCP relay waits for room (``wait_for_room``) and
then reads no more than that, which is how it stops reading and lets the kernel's window push
back on the sender; ``put_nowait`` refuses an item that does not fit, which is how a UDP relay
drops like a router's full queue. One item
is always accepted into an empty line, whatever its size, so that nothing larger than the
limit can wedge a direction. ``close()`` ends the line: ``get`` drains what was put before it
and then returns ``None``.

Only the forwarder's relays use it. It is an ``asyncio`` object of one event loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

__all__ = ["DelayLine"]


class DelayLine:
    """A bounded FIFO of byte strings, each released no earlier than its due time.

    Args:
        limit: Bytes the line may hold (a single item is admitted into an empty line even
            when it is larger).
        clock: The clock due times are read on (the event loop's ``time``).
    """

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of bytes, not {limit!r}")
        self._limit = limit
        self._clock = clock
        self._items: collections.deque[tuple[float, bytes]] = collections.deque()
        self._buffered = 0
        self._closed = False
        self._changed = asyncio.Event()  # set on every put, get and close; waiters re-check
        #: The most bytes the line has held at once.
        self.peak = 0

    @property
    def buffered(self) -> int:
        """Bytes in the line now."""
        return self._buffered

    @property
    def room(self) -> int:
        """Bytes that ``put_nowait`` accepts now (at least ``limit`` when the line is empty)."""
        return self._limit - self._buffered if self._items else self._limit

    async def wait_for_room(self) -> int:
        """Wait until the line has room or is closed; the bytes of room then (0 if closed)."""
        while self.room <= 0 and not self._closed:
            await self._wait_for_change()
        return 0 if self._closed else self.room

    def put_nowait(self, data: bytes, delay: float) -> bool:
        """Add ``data``, due ``delay`` seconds from now, if it fits; whether it was added.

        Raises:
            RuntimeError: The line is closed.
        """
        if self._closed:
            raise RuntimeError("put on a closed DelayLine")
        if self._items and self._buffered + len(data) > self._limit:
            return False
        self._items.append((self._clock() + delay, data))
        self._buffered += len(data)
        self.peak = max(self.peak, self._buffered)
        self._changed.set()
        return True

    def close(self) -> None:
        """End the line: what it holds is still delivered, then ``get`` returns ``None``."""
        self._closed = True
        self._changed.set()

    async def get(self) -> bytes | None:
        """The oldest item, once it is due; ``None`` when the line is closed and empty.

        Cancellation leaves the item in the line.
        """
        while not self._items:
            if self._closed:
                return None
            await self._wait_for_change()
        due, _ = self._items[0]
        wait = due - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)
        _, data = self._items.popleft()
        self._buffered -= len(data)
        self._changed.set()
        return data

    async def _wait_for_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()
