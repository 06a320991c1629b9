"""How a NATS connection of ours publishes: small messages batched, large ones in pieces.

Theory of operation: each send of a NATS connection (``lower.nats_connection``) comes here.

* Batching: the first message of a loop iteration is published at once (a lone call waits
  for nothing). Small messages (``SMALL_MESSAGE_SIZE``) sent to a subject later in the same
  iteration join that subject's *batch*, one NATS payload of several messages
  (``lower.nats_envelope``), published by one task at the start of the next iteration, or
  sooner when the batch reaches ``BATCH_SIZE``. Many calls in flight then cost NATS (and
  nats-py, whose per-message work dominates) one message per iteration, not one per call.
* Order: per subject, what was sent first is published first. A message that does not join
  a subject's pending batch (a large one, a full batch, a control message) publishes that
  batch first. The batch task takes each subject's batch out just before publishing it, and
  nats-py queues a publish before it can yield, so nothing overtakes it.
* Pieces: a payload above the server's ``max_payload`` is published as pieces, back to back
  under a lock, so that no other send of this connection comes between them.
* Failures: a direct send raises (``PeerDisconnectedError``: nats-py refused it); a batch
  that nats-py refuses when its task publishes it is counted as dropped, message by message
  (the Peer's heartbeats and replays cover the link that lost them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from ..errors import PeerClosedError, PeerDisconnectedError
from .base import Frame
from .nats_envelope import encode_payloads

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["Publisher", "SMALL_MESSAGE_SIZE", "BATCH_SIZE"]

log = logging.getLogger(__name__)

#: Messages up to this many bytes may be batched; larger ones go out on their own.
SMALL_MESSAGE_SIZE: Final = 16 * 1024
#: A batch is published once it holds this many bytes (well under any ``max_payload``).
BATCH_SIZE: Final = 64 * 1024


class Publisher:
    """The sending half of one NATS connection.

    Args:
        client: The connection's nats-py client.
        drop: Counts (and logs) one message that could not be delivered.
    """

    def __init__(self, client: Client, drop: Callable[[str], None]) -> None:
        self._client = client
        self._drop = drop
        self._lock = asyncio.Lock()
        self._batches: dict[str, list[Sequence[Frame]]] = {}
        self._sizes: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # something was published in this loop iteration
        self.closed = False

    async def publish(self, subject: str, frames: Sequence[Frame]) -> None:
        """Publish one message to ``subject``, batched with others where it may be.

        Raises:
            PeerClosedError: The connection was closed.
            PeerDisconnectedError: nats-py refused it (its connection to NATS is down and
                its buffer full, or it was closed under us).

        Cancellation: the message is queued whole or not at all; once its first piece is
        queued, the others are queued too before ``CancelledError`` propagates.
        """
        if self.closed:
            raise PeerClosedError("connection closed")
        size = sum(map(len, frames))
        if size <= SMALL_MESSAGE_SIZE and self._join(subject, frames, size):
            return
        await self.flush(subject)
        await self._publish_now(subject, [frames])

    def _join(self, subject: str, frames: Sequence[Frame], size: int) -> bool:
        """Add a small message to ``subject``'s batch, or start one; False if it may not."""
        batch = self._batches.get(subject)
        if batch is None:
            if not self._busy or self._lock.locked():
                return False
            self._batches[subject] = [frames]
            self._sizes[subject] = size
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._publish_batches())
            return True
        if self._sizes[subject] + size > BATCH_SIZE:
            return False
        batch.append(frames)
        self._sizes[subject] += size
        return True

    async def _publish_now(self, subject: str, messages: list[Sequence[Frame]]) -> None:
        payloads = encode_payloads(messages, self._client.max_payload)
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._idle)
        if len(payloads) == 1 and not self._lock.locked():
            await self._publish_raw(subject, payloads[0])
            return
        async with self._lock:
            cancelled: BaseException | None = None
            for payload in payloads:
                try:
                    await self._publish_raw(subject, payload)
                except asyncio.CancelledError as exc:
                    cancelled = cancelled or exc  # queued already: queue the rest, then raise
            if cancelled is not None:
                raise cancelled

    def _idle(self) -> None:
        self._busy = False

    async def flush(self, subject: str | None = None) -> None:
        """Publish ``subject``'s pending batch now (every subject's when None).

        Raises:
            PeerClosedError, PeerDisconnectedError: As for ``publish``.
        """
        subjects = list(self._batches) if subject is None else [subject]
        for name in subjects:
            batch = self._batches.pop(name, None)
            if batch is not None:
                del self._sizes[name]
                await self._publish_now(name, batch)

    async def _publish_batches(self) -> None:
        """The batch task: publish every pending batch, one subject at a time."""
        try:
            while self._batches and not self.closed:
                subject = next(iter(self._batches))
                batch = self._batches.pop(subject)
                del self._sizes[subject]
                try:
                    await self._publish_now(subject, batch)
                except (PeerClosedError, PeerDisconnectedError) as exc:
                    for _ in batch:
                        self._drop(f"a batched message to {subject}: {exc}")
        finally:
            self._task = None

    async def _publish_raw(self, subject: str, payload: bytes) -> None:
        from nats.errors import ConnectionClosedError, OutboundBufferLimitError

        try:
            await self._client.publish(subject, payload)
        except ConnectionClosedError:
            if self.closed:
                raise PeerClosedError("connection closed") from None
            raise PeerDisconnectedError("the NATS connection is closed") from None
        except OutboundBufferLimitError:
            raise PeerDisconnectedError(
                "the NATS connection is down and its outgoing buffer is full"
            ) from None

    async def publish_quietly(self, subject: str, payload: bytes) -> None:
        """Publish a control payload after ``subject``'s batch; lost if NATS is down."""
        with contextlib.suppress(PeerClosedError, PeerDisconnectedError):
            await self.flush(subject)
            await self._publish_raw(subject, payload)

    async def aclose(self) -> None:
        """Stop the batch task (what it has not published is dropped)."""
        self.closed = True
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
