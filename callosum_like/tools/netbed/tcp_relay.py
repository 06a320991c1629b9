"""The forwarder's TCP side: a transparent relay that delays each chunk, in order, bounded.

Theory of operation: the router's nftables rules divert every new TCP connection between two
hosts of the bed to the forwarder's listening socket (TPROXY), so the forwarder accepts it
*as* the destination: the accepted socket's local address is the host that was dialled. The
relay then dials that host from a transparent socket bound to the caller's own address, so
the called host sees its real caller (replies come back to this socket through the router's
``socket transparent`` rule). Two ``_Direction`` pumps carry the bytes:

* a reader waits for room in its ``DelayLine`` (``buffer_size`` bytes) and only then reads a
  chunk, stamped with its arrival time plus the delay in force; a full line means nothing is
  read, the kernel's buffers fill and TCP's window stops the sender (back-pressure);
* a writer takes chunks in arrival order, each at its due time, writes it and waits for the
  socket to drain, so the bytes in flight per direction stay within the line, the two
  sockets' kernel buffers and one chunk.

An end-of-file from one side is passed on (``write_eof``) after the bytes before it; the
relay closes once both directions ended. A reset or error on either side aborts both, with
a reset (``SO_LINGER`` 0), so each host sees what a direct connection would have shown. The
dial to the called host waits the delay first, as a SYN would; the caller's own handshake
completes at once with the router (the one thing a relay cannot delay).

Only ``forwarder`` imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final

from .delayline import DelayLine

__all__ = ["IP_TRANSPARENT", "CHUNK_SIZE", "TCPRelay", "transparent_socket"]

log = logging.getLogger(__name__)

#: Linux's ``IP_TRANSPARENT`` socket option (bind to, and accept for, addresses not ours).
IP_TRANSPARENT: Final = 19
#: Bytes read at once; the delay is applied per chunk read.
CHUNK_SIZE: Final = 64 * 1024


def transparent_socket(kind: socket.SocketKind) -> socket.socket:
    """A non-blocking IPv4 socket of ``kind`` with ``IP_TRANSPARENT`` and ``SO_REUSEADDR``."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (``SO_LINGER`` 0), as a broken connection would show."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Direction:
    """One direction of a relayed connection: reader → ``DelayLine`` → writer."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        line: DelayLine,
        delay: Callable[[], float],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._line = line
        self._delay = delay

    async def fill(self) -> None:
        """Read chunks into the line, only while it has room; close it at end-of-file."""
        try:
            while room := await self._line.wait_for_room():
                chunk = await self._reader.read(min(room, CHUNK_SIZE))
                if not chunk:
                    break
                accepted = self._line.put_nowait(chunk, self._delay())
                assert accepted  # only the draining side ran meanwhile: it made room
        finally:
            self._line.close()

    async def drain(self) -> None:
        """Write each chunk at its due time; pass the end-of-file on after the last."""
        while (chunk := await self._line.get()) is not None:
            self._writer.write(chunk)
            await self._writer.drain()
        if self._writer.can_write_eof():
            self._writer.write_eof()


class TCPRelay:
    """The TCP half of the forwarder: accepts diverted connections and relays them.

    Args:
        delay: Returns the one-way delay in seconds in force now.
        buffer_size: Bytes each direction of a connection may hold.
    """

    def __init__(self, delay: Callable[[], float], buffer_size: int) -> None:
        self._delay = delay
        self._buffer_size = buffer_size
        self._lines: set[DelayLine] = set()  # those of the connections being relayed
        self._past_peak = 0  # the largest peak of the lines of connections that ended
        self._handlers: set[asyncio.Task[object]] = set()  # one per connection being relayed
        #: Connections relayed so far.
        self.connections = 0

    async def aclose(self) -> None:
        """Reset every connection being relayed and wait until their handlers have ended."""
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def peak_buffered(self) -> int:
        """The most bytes any one direction of any connection has held."""
        return max([self._past_peak, *(line.peak for line in self._lines)])

    async def handle(self, near_reader: asyncio.StreamReader, near: asyncio.StreamWriter) -> None:
        """Relay one accepted connection until both sides are done (``start_server``'s callback).

        A failure on either side, or cancellation (``aclose``), resets both sides and ends
        the relay quietly: this is a top-level task that nobody else waits for.
        """
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        caller = near.get_extra_info("peername")
        callee = near.get_extra_info("sockname")  # TPROXY: the address the caller dialled
        far: asyncio.StreamWriter | None = None
        try:
            await asyncio.sleep(self._delay())
            far_reader, far = await self._dial(caller, callee)
            await self._relay(near_reader, near, far_reader, far)
        except (Exception, asyncio.CancelledError) as exc:  # a side failed, or ``aclose``
            log.debug("relay %s -> %s ended: %r", caller, callee, exc)
            for writer in (near, far):
                if writer is not None:
                    _abort(writer)
        finally:
            for writer in (near, far):
                if writer is not None:
                    writer.close()

    async def _dial(
        self, caller: tuple[str, int], callee: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = transparent_socket(socket.SOCK_STREAM)
        try:
            try:
                sock.bind(caller)  # the callee sees its real caller
            except OSError:
                sock.bind((caller[0], 0))  # that port is still held here: any port will do
            await asyncio.get_running_loop().sock_connect(sock, callee)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=CHUNK_SIZE)

    async def _relay(
        self,
        near_reader: asyncio.StreamReader,
        near: asyncio.StreamWriter,
        far_reader: asyncio.StreamReader,
        far: asyncio.StreamWriter,
    ) -> None:
        clock = asyncio.get_running_loop().time
        outbound = DelayLine(self._buffer_size, clock)
        inbound = DelayLine(self._buffer_size, clock)
        self._lines |= {outbound, inbound}
        there = _Direction(near_reader, far, outbound, self._delay)
        back = _Direction(far_reader, near, inbound, self._delay)
        try:
            async with asyncio.TaskGroup() as pumps:
                for pump in (there.fill, there.drain, back.fill, back.drain):
                    pumps.create_task(pump())
        finally:
            self._lines -= {outbound, inbound}
            self._past_peak = max(self._past_peak, outbound.peak, inbound.peak)
