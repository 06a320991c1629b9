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
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .wire import messages as m

__all__ = ["StreamInbox", "CreditWindow", "UploadBody", "MAX_CREDIT"]

#: The most credit a producer accepts holding; a larger grant is capped (a hostile consumer
#: cannot make us count without bound).
MAX_CREDIT: Final = 1 << 20
#: The messages a ``StreamInbox`` counts as items (the rest end the stream).
_ITEMS: Final = (m.StreamItem, m.UploadItem)


class CreditWindow:
    """The producer's side: how many items the consumer can take now.

    Args:
        initial: The credit the producer starts with (the consumer's window).
    """

    def __init__(self, initial: int) -> None:
        self.available = initial
        self._granted = asyncio.Event()
        self._error: BaseException | None = None

    def grant(self, amount: int) -> None:
        """The consumer took ``amount`` more items."""
        self.available = min(self.available + amount, MAX_CREDIT)
        self._granted.set()

    def fail(self, error: BaseException) -> None:
        """No more credit will come: ``take`` raises ``error``."""
        self._error = error
        self._granted.set()

    async def take(self) -> None:
        """Wait for one item's worth of credit and use it.

        Raises:
            Exception: The error given to ``fail``.
        """
        while self.available <= 0 and self._error is None:
            self._granted.clear()
            await self._granted.wait()
        if self._error is not None:
            raise self._error
        self.available -= 1


class StreamInbox:
    """Items of one stream call, between the receive loop and the consumer.

    Args:
        window: The credit the producer starts with.
    """

    def __init__(self, window: int, credit: type[m.Credit | m.UploadCredit] = m.Credit) -> None:
        self._window = window
        self._credit = credit
        self._items: deque[m.Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._taken = 0  # items taken since credit was last granted
        self._ended = False

    def put(self, msg: m.Message) -> bool:
        """Queue an item or the final reply; False when an item exceeds the credit."""
        if type(msg) in _ITEMS:
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

    def credit_message(self, call_id: int) -> m.Credit | m.UploadCredit:
        """The Credit that returns what was taken since the last one."""
        amount, self._taken = self._taken, 0
        return self._credit(id=call_id, amount=amount)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class UploadBody:
    """``request.body`` of a call whose caller streams the body: an async iterator of items.

    Items are unpacked as the handler takes them; credit goes back to the caller as they
    are taken, so the caller runs at most a window ahead. Iterate it once.

    Args:
        call_id: The call, as the caller numbered it.
        inbox: Where the receive loop puts ``UploadItem`` and ``UploadEnd``.
        send_credit: Sends an ``UploadCredit`` to the caller.
        unpack: Turns an item's packed body into its value (``codec.unpack_body``).
    """

    def __init__(
        self,
        call_id: int,
        inbox: StreamInbox,
        send_credit: Callable[[m.Message], Awaitable[None]],
        unpack: Callable[[m.PackedBody], Any],
    ) -> None:
        self._id = call_id
        self._inbox = inbox
        self._send_credit = send_credit
        self._unpack = unpack
        self._done = False

    def __repr__(self) -> str:
        return f"<UploadBody of call {self._id}>"

    def __aiter__(self) -> UploadBody:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        msg = await self._inbox.get()
        if type(msg) is not m.UploadItem:
            self._done = True
            raise StopAsyncIteration
        if self._inbox.consumed():
            await self._send_credit(self._inbox.credit_message(self._id))
        return self._unpack(msg.body)
