"""The consumer's side of a stream: a bounded inbox and the credit it grants back.

Theory of operation: a stream call's items arrive in the receive loop and wait here until
the consumer's ``async for`` takes them. The producer may send only what the consumer has
granted (``window`` items at the start, then whatever ``Credit`` messages add), so the inbox
never holds more than ``window`` items plus the final reply; an item past that is refused
(``put`` returns False) and the receive loop drops it. Credit goes back in batches of half
a window, so a fast stream costs one Credit message per ``window // 2`` items.

Only ``peer`` uses this module; it does no I/O of its own.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .wire import messages as m

__all__ = ["StreamInbox"]


class StreamInbox:
    """Items of one stream call, between the receive loop and the consumer.

    Args:
        window: The credit the producer starts with.
    """

    def __init__(self, window: int) -> None:
        self._window = window
        self._items: deque[m.Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._taken = 0  # items taken since credit was last granted
        self._ended = False

    def put(self, msg: m.Message) -> bool:
        """Queue an item or the final reply; False when an item exceeds the credit."""
        if type(msg) is m.StreamItem:
            if len(self._items) >= self._window or self._ended:
                return False
        else:
            self._ended = True
        self._items.append(msg)
        self._wake()
        return True

    def fail(self, error: BaseException) -> None:
        """The link ended: the consumer gets ``error`` once the queued items are taken."""
        self._error = error
        self._wake()

    async def get(self) -> m.Message:
        """The next item or the final reply.

        Raises:
            Exception: The error given to ``fail`` (after every queued message).
        """
        while not self._items:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def consumed(self) -> bool:
        """Count one item taken; True when it is time to grant credit back."""
        self._taken += 1
        return self._taken >= max(1, self._window // 2)

    def credit_message(self, call_id: int) -> m.Credit:
        """The Credit that returns what was taken since the last one."""
        amount, self._taken = self._taken, 0
        return m.Credit(id=call_id, amount=amount)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
