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
  its head announced is a protocol error. A body takes memory only as its bytes arrive, and
  a link holds at most ``MAX_OPEN_TRANSFERS`` transfers at once.
* Neither side copies a large body whole at once: the sender cuts its chunks from the
  ``LargeBody`` that ``pack_body`` made (views of the caller's bytes), and the receiver
  copies each chunk, as it arrives, into the one buffer that becomes the body. On CPython
  that buffer is the body's final ``bytes`` object, made at its full size but uninitialized,
  so the system commits its pages only as chunks are written there (``_DirectBuffer``);
  elsewhere it is a ``BytesIO`` that doubles as bytes arrive. A ``bytes`` body reaches the
  application as that buffer, with nothing joined or unpacked.
* A sender that gives up (its caller cancelled or timed out) sends ``ChunkAbort``; the
  receiver forgets the partial body. A link that ends fails every transfer on it.

``OutgoingTransfers`` uses asyncio futures to make senders wait; ``Reassembly`` is plain
bookkeeping. Only ``peer`` uses this module.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from .errors import ProtocolError
from .wire import messages as m
from .wire.codec import (
    BIN_HEADER_SIZE,
    ChunkedHead,
    OversizeBodyError,
    bin_value_size,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "CHUNK_WINDOW",
    "MAX_OPEN_TRANSFERS",
    "TransferStopped",
    "OutgoingTransfers",
    "Reassembly",
]

#: Bytes per chunk unless the peer sets ``chunk_size``. Chosen by measurement (see
#: docs/performance.md): 256 KiB keeps a small call's wait behind a large body well under a
#: millisecond on loopback, while large echoes run within a few percent of unchunked speed.
DEFAULT_CHUNK_SIZE: Final = 256 * 1024
#: Unacknowledged chunks a sender may have in flight per transfer.
CHUNK_WINDOW: Final = 4
#: Transfers a receiver assembles at once per link; a sender never opens more.
MAX_OPEN_TRANSFERS: Final = 16
#: Bodies from this size on are reassembled in place in their final ``bytes`` object
#: (``_DirectBuffer``); smaller ones in a ``BytesIO``.
DIRECT_BUFFER_SIZE: Final = 64 * 1024
_PYBUF_WRITE: Final = 0x200  # PyMemoryView_FromMemory: a writable view
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


class _GrowingBuffer:
    """One body's bytes in a ``BytesIO`` that grows by doubling as they arrive.

    It is never more than twice the bytes written so far, and ``value`` hands over the
    buffer itself: CPython's ``BytesIO.getvalue`` returns its own ``bytes`` when the buffer
    is exactly full and nothing else views it. The fallback of ``_DirectBuffer``.
    """

    __slots__ = ("_capacity", "_io", "_position", "_size")

    def __init__(self, size: int) -> None:
        self._io = io.BytesIO()
        self._size = size
        self._capacity = 0
        self._position = 0

    def write(self, data: bytes | memoryview) -> None:
        end = self._position + len(data)
        if end > self._capacity:
            # Extend by writing the new last byte: BytesIO then resizes its buffer once, to
            # exactly this size, where appending would resize it at every write.
            self._capacity = min(self._size, 2 * end)
            self._io.seek(self._capacity - 1)
            self._io.write(b"\0")
            self._io.seek(self._position)
        self._io.write(data)
        self._position = end

    def value(self) -> bytes:
        """The whole body (all ``size`` bytes must have been written)."""
        value = self._io.getvalue()
        self._io.close()
        return value


class _DirectBuffer:
    """One body's bytes, written in order into the ``bytes`` object the application gets.

    The object is created at its full size with uninitialized contents (CPython's
    ``PyBytes_FromStringAndSize(NULL, size)``, the way C extensions build ``bytes``) and
    filled through a writable view of its storage before anyone else sees it. Its memory is
    not touched until bytes are written there, so the pages the system commits follow the
    bytes that arrived, as with doubling; but nothing is zero-filled, and nothing is moved
    when it would have grown: each byte is copied once, from the transport's frame.
    """

    __slots__ = ("_position", "_value", "_view")

    def __init__(self, value: bytes, view: memoryview) -> None:
        self._value = value
        self._view = view
        self._position = 0

    def write(self, data: bytes | memoryview) -> None:
        end = self._position + len(data)
        self._view[self._position : end] = data
        self._position = end

    def value(self) -> bytes:
        """The whole body (all ``size`` bytes must have been written)."""
        self._view.release()
        return self._value


def _direct_api() -> Callable[[int], tuple[bytes, memoryview]] | None:
    """How to make an uninitialized ``bytes`` and a view to fill it; None off CPython."""
    try:
        import ctypes
    except ImportError:  # a Python built without it
        return None
    if sys.implementation.name != "cpython" or not hasattr(ctypes, "pythonapi"):
        return None
    api = ctypes.pythonapi
    if not hasattr(api, "PyMemoryView_FromMemory"):
        return None
    new_bytes = api.PyBytes_FromStringAndSize
    new_bytes.restype = ctypes.py_object
    new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    view_of = api.PyMemoryView_FromMemory
    view_of.restype = ctypes.py_object
    view_of.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
    offset = bytes.__basicsize__ - 1  # where a ``bytes`` object's data starts (ob_sval)

    def make(size: int) -> tuple[bytes, memoryview]:
        value = new_bytes(None, size)
        return value, view_of(id(value) + offset, size, _PYBUF_WRITE)

    value, view = make(8)
    view[:] = b"selftest"
    view.release()
    return make if value == b"selftest" else None  # a layout we do not know: not ours


def _new_buffer(size: int) -> _DirectBuffer | _GrowingBuffer:
    """The buffer for a body of ``size`` bytes."""
    if _make_direct is not None and size >= DIRECT_BUFFER_SIZE:
        try:
            return _DirectBuffer(*_make_direct(size))
        except MemoryError:  # no room to reserve it whole (strict overcommit): grow instead
            pass
    return _GrowingBuffer(size)


_make_direct = _direct_api()


@dataclass(eq=False)
class _Incoming:
    head: ChunkedHead
    received: int = 0
    #: The body's ``bin 32`` header when it is one ``bytes`` value: the buffer then holds
    #: just the value, which becomes the application's body as it is.
    header: bytes = b""
    buffer: _DirectBuffer | _GrowingBuffer | None = None


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

        The whole message's body is a ``LargeBody``: the ``bin 32`` header and the value
        itself when the body is one ``bytes`` value, else the packed body in one piece.

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
        data = memoryview(chunk.body)
        if incoming.buffer is None:  # the first chunk: is the body one ``bytes`` value?
            if bin_value_size(data) == incoming.head.size - BIN_HEADER_SIZE:
                incoming.header = bytes(data[:BIN_HEADER_SIZE])
                data = data[BIN_HEADER_SIZE:]
            incoming.buffer = _new_buffer(incoming.head.size - len(incoming.header))
        incoming.buffer.write(data)
        incoming.received += size
        if incoming.received < incoming.head.size:
            return None
        del self._open[chunk.transfer]
        value = incoming.buffer.value()
        whole = m.LargeBody((incoming.header, value) if incoming.header else (value,))
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
