"""What a relay passes on to each link: sent in order, never holding a receive loop.

Theory of operation: a relay forwards from inside a Peer's receive loop. A body over
``chunk_size`` leaves a window of chunks ahead of its receiver, so sending it waits for the
next hop's credit, which only that hop's receive loop reads: maybe the very loop that would
be waiting. Two large calls crossing a relay in opposite directions held each other's loops
for ever that way, and a large call into a suspended hop stopped the relay from reading the
other hop (whose heartbeat then expired).

So ``Outboxes.send`` sends a message at once only when it goes whole (no chunks) and nothing
is queued for its link; otherwise the message joins that link's queue, which one task sends
in order. Messages to one link leave in the order the relay passed them on (a stream's
items, a call and then its ``Cancel``), and no receive loop waits for a next hop's credit.
A send that finds its link gone calls the message's ``failed`` callback, if it has one.

What waits in a queue is what the relay has received already: it holds at most
``max_forwarded`` calls, each body at most ``max_body_size``. Only ``relay`` uses this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from .errors import PeerClosedError, PeerDisconnectedError
from .link import Link
from .wire import messages as m

__all__ = ["Outboxes", "Failed"]

log = logging.getLogger(__name__)

#: Called when a message could not be sent because its link is gone.
Failed = Callable[[Exception], Awaitable[None]]
_Queue = deque[tuple[m.Message, "Failed | None"]]


class Outboxes:
    """The queues of what a relay passes on, one per link that has one."""

    def __init__(self) -> None:
        self._queues: dict[Link, _Queue] = {}
        self._tasks: dict[Link, asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[None]] = set()  # dropped ones too, until they end

    def __len__(self) -> int:
        """Messages waiting, over all links."""
        return sum(map(len, self._queues.values()))

    async def send(self, link: Link, msg: m.Message, failed: Failed | None = None) -> None:
        """Send ``msg`` on ``link`` after what is queued for it; wait only for a whole one."""
        queue = self._queues.get(link)
        if queue is None and not link.chunks(msg):
            try:
                await link.send(msg)
            except (PeerDisconnectedError, PeerClosedError) as exc:
                if failed is not None:
                    await failed(exc)
            return
        if queue is None:
            queue = self._queues[link] = deque()
            task = self._tasks[link] = asyncio.create_task(self._drain(link, queue))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        queue.append((msg, failed))

    async def _drain(self, link: Link, queue: _Queue) -> None:
        try:
            while queue:
                msg, failed = queue[0]
                try:
                    await link.send(msg)
                except (PeerDisconnectedError, PeerClosedError) as exc:
                    if failed is not None:
                        await failed(exc)
                except Exception:
                    log.exception("could not pass %s on to %r", type(msg).__name__, link)
                queue.popleft()
        finally:
            if self._queues.get(link) is queue:
                del self._queues[link]
                del self._tasks[link]

    def drop(self, link: Link) -> None:
        """``link`` ended: forget what waits for it (its calls are answered by the relay)."""
        self._queues.pop(link, None)
        task = self._tasks.pop(link, None)
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        """Stop every queue's task."""
        tasks = list(self._running)
        self._queues.clear()
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
