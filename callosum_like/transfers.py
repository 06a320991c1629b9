"""Chunked bodies: the sender's window and the receiver's reassembly, for one link.

Theory of operation: a body larger than the peer's ``chunk_size`` does not travel in one
frame. The sender sends the message's *head* (``codec.encode_head``: the header fields, a
transfer id and the body's size) and then the body in ``Chunk`` messages of ``chunk_size``
bytes. Every other message (a small call, a reply, a ping) goes out between two chunks, so
it waits behind at most a few chunks, not behind the whole body.

* Flow control: the sender may have at most ``window`` chunks of a transfer unacknowledged;
  the receiver answers each chunk it has taken with a ``ChunkAck``. That keeps the bytes
  queued in transports (and ahead of any small message) under ``window * chunk_size`` per
  transfer, whatever the transport, and ties the sender's pace to the receiver's.
* Reassembly enforces ``max_body_size`` from the head on: an oversize body is refused
  (``ChunkStop``) before any chunk is buffered, and a transfer whose chunks overrun the size
  its head announced is a protocol error. Buffers grow only as bytes arrive, and a link holds
  at most ``MAX_OPEN_TRANSFERS`` transfers at once.
* Neither side copies a large body whole on the event loop: the sender cuts its chunks
  from the ``LargeBody`` that ``pack_body`` made (views of the caller's bytes), and the
  receiver keeps the chunks as they came and joins them on a worker thread when the body is
  used (``load_body``; ``bytes.join`` drops the GIL while it copies).
* A sender that gives up (its caller cancelled or timed out) sends ``ChunkAbort``; the
  receiver forgets the partial body. A link that ends fails every transfer on it.

``OutgoingTransfers`` uses asyncio futures to make senders wait; ``Reassembly`` is plain
bookkeeping. Only ``peer`` uses this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .errors import ProtocolError
from .wire import messages as m
from .wire.codec import ChunkedHead, OversizeBodyError, bin_value_parts, unpack_body

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "CHUNK_WINDOW",
    "MAX_OPEN_TRANSFERS",
    "TransferStopped",
    "OutgoingTransfers",
    "Reassembly",
    "OFFLOAD_SIZE",
    "load_body",
]

#: Bytes per chunk unless the peer sets ``chunk_size``. Chosen by measurement (see
#: docs/performance.md): 256 KiB keeps a small call's wait behind a large body well under a
#: millisecond on loopback, while large echoes run within a few percent of unchunked speed.
DEFAULT_CHUNK_SIZE: Final = 256 * 1024
#: Unacknowledged chunks a sender may have in flight per transfer.
CHUNK_WINDOW: Final = 4
#: Transfers a receiver assembles at once per link; a sender never opens more.
MAX_OPEN_TRANSFERS: Final = 16
#: A received body at least this large is joined on a worker thread, not on the event loop.
#: Below it the copy takes well under a millisecond, less than handing it to a thread.
OFFLOAD_SIZE: Final = 1 << 20
#: Refused transfers whose in-flight chunks are ignored quietly until their sender aborts.
_STOPPED_MEMORY: Final = 64


class TransferStopped(Exception):
    """The receiver refused the transfer (``ChunkStop``); it has told our caller why."""


@dataclass(eq=False)
class _Outgoing:
    credit: int
    waiter: asyncio.Future[None] | None = None
    error: BaseException | None = None


class OutgoingTransfers:
    """The transfers this side is sending on one link, and their windows.

    Args:
        window: Chunks a transfer may have unacknowledged.
    """

    def __init__(self, window: int = CHUNK_WINDOW) -> None:
        self._window = window
        self._next_id = 1
        self._open: dict[int, _Outgoing] = {}
        self._slots = asyncio.Semaphore(MAX_OPEN_TRANSFERS)
        self._error: BaseException | None = None

    async def open(self) -> int:
        """Start a transfer (waiting while ``MAX_OPEN_TRANSFERS`` are open); its id."""
        if self._error is not None:
            raise self._error
        await self._slots.acquire()
        if self._error is not None:
            self._slots.release()
            raise self._error
        transfer = self._next_id
        self._next_id += 1
        self._open[transfer] = _Outgoing(self._window)
        return transfer

    def close(self, transfer: int) -> None:
        """The transfer is over (sent, stopped or abandoned)."""
        if self._open.pop(transfer, None) is not None:
            self._slots.release()

    async def take(self, transfer: int) -> None:
        """Wait until ``transfer`` may send one more chunk, and count it.

        Raises:
            TransferStopped: The receiver refused the transfer.
            Exception: The link ended (the error given to ``fail``).
        """
        state = self._open[transfer]
        while state.credit < 1 and state.error is None:
            state.waiter = asyncio.get_running_loop().create_future()
            try:
                await state.waiter
            finally:
                state.waiter = None
        if state.error is not None:
            raise state.error
        state.credit -= 1

    def ack(self, transfer: int, amount: int) -> bool:
        """The receiver took ``amount`` chunks; False if we never opened ``transfer``."""
        state = self._open.get(transfer)
        if state is None or amount < 1:
            # Acks of a transfer's last window arrive after it is done: only an ack of a
            # transfer never opened is wrong.
            return amount >= 1 and 0 < transfer < self._next_id
        state.credit += amount
        _wake(state)
        return True

    def stop(self, transfer: int) -> bool:
        """The receiver refused ``transfer``; False if it is not open."""
        state = self._open.get(transfer)
        if state is None:
            return False
        state.error = TransferStopped(transfer)
        _wake(state)
        return True

    def fail(self, error: BaseException) -> None:
        """The link ended: every sender raises ``error``, and no transfer opens again."""
        self._error = error
        for state in self._open.values():
            state.error = error
            _wake(state)


def _wake(state: _Outgoing) -> None:
    if state.waiter is not None and not state.waiter.done():
        state.waiter.set_result(None)


@dataclass(eq=False)
class _Incoming:
    head: ChunkedHead
    parts: list[bytes] = field(default_factory=list)
    received: int = 0


class Reassembly:
    """The chunked bodies arriving on one link.

    Args:
        max_body_size: The largest body accepted, in bytes.
    """

    def __init__(self, max_body_size: int) -> None:
        self._max_body_size = max_body_size
        self._open: dict[int, _Incoming] = {}
        self._stopped: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    @property
    def buffered(self) -> int:
        """Bytes held in partial bodies."""
        return sum(incoming.received for incoming in self._open.values())

    def begin(self, head: ChunkedHead) -> None:
        """A chunked message starts.

        Raises:
            OversizeBodyError: Its body is over ``max_body_size``; the caller answers it and
                sends ``ChunkStop``. Chunks of it that are already on their way are ignored.
            ProtocolError: The transfer id is in use, or too many transfers are open.
        """
        if head.transfer in self._open:
            raise ProtocolError(f"transfer {head.transfer} is already open")
        if head.size < 1:
            raise ProtocolError("a chunked body must not be empty")
        if head.size > self._max_body_size:
            self._remember_stopped(head.transfer)
            raise OversizeBodyError(head.message, head.size)
        if len(self._open) >= MAX_OPEN_TRANSFERS:
            raise ProtocolError(f"more than {MAX_OPEN_TRANSFERS} chunked transfers at once")
        self._stopped.pop(head.transfer, None)
        self._open[head.transfer] = _Incoming(head)

    def feed(self, chunk: m.Chunk) -> m.Message | None:
        """Add a chunk; the whole message once its last chunk is in, else None.

        The whole message's body is a ``LargeBody`` of the chunks as they came.

        Raises:
            ProtocolError: The chunk belongs to no open transfer (and not to one we refused),
                or overruns the size its head announced (the transfer is dropped).
        """
        incoming = self._open.get(chunk.transfer)
        if incoming is None:
            if chunk.transfer in self._stopped:
                return None
            raise ProtocolError(f"chunk of unknown transfer {chunk.transfer}")
        size = len(chunk.body)
        if incoming.received + size > incoming.head.size or not size:
            del self._open[chunk.transfer]
            raise ProtocolError(
                f"transfer {chunk.transfer}: chunk of {size} bytes after "
                f"{incoming.received} of {incoming.head.size}"
            )
        # Exact bytes, so that the final join can drop the GIL; a chunk a transport handed
        # over as a view or a bytearray is copied here, one chunk at a time.
        body = chunk.body
        incoming.parts.append(body if type(body) is bytes else bytes(body))
        incoming.received += size
        if incoming.received < incoming.head.size:
            return None
        del self._open[chunk.transfer]
        whole = m.LargeBody(incoming.parts)
        return replace(incoming.head.message, body=whole)  # type: ignore[arg-type]

    def expects(self, transfer: int) -> bool:
        """Whether ``transfer`` is being assembled (its chunks get acknowledged)."""
        return transfer in self._open

    def abort(self, transfer: int) -> None:
        """The sender gave ``transfer`` up: forget it, whether open, refused or never seen."""
        self._stopped.pop(transfer, None)
        self._open.pop(transfer, None)

    def _remember_stopped(self, transfer: int) -> None:
        self._stopped[transfer] = None
        while len(self._stopped) > _STOPPED_MEMORY:
            self._stopped.popitem(last=False)


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _join_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that join large bodies.

    Our own, not the loop's default executor: an application's blocking work there must not
    delay a reply, nor ours delay that work.
    """
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="callosum_like-join"
            )
        return _executor


def _forget_executor() -> None:
    """In a forked child the parent's worker threads do not exist: start a new pool."""
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_executor)


async def load_body(body: m.PackedBody) -> Any:
    """Unpack a received body; a large one is joined on a worker thread.

    The event loop goes on serving other messages while megabytes are copied. A body that
    is one ``bytes`` value (every large ``bytes`` body) needs nothing more; any other large
    body is joined off the loop and unpacked on it.

    Raises:
        ProtocolError: The body is not exactly one msgpack value.
    """
    if type(body) is not m.LargeBody or len(body) < OFFLOAD_SIZE:
        return unpack_body(body)
    loop = asyncio.get_running_loop()
    payload = bin_value_parts(body)
    pieces = body.parts if payload is None else payload
    joined = await loop.run_in_executor(_join_executor(), b"".join, pieces)
    return joined if payload is not None else unpack_body(joined)
