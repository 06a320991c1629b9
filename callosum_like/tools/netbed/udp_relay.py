"""The forwarder's UDP side: a transparent relay that delays each datagram, in order.

Theory of operation: the router's nftables rules divert UDP between two hosts of the bed to
the forwarder's listening socket (TPROXY). Its ``IP_RECVORIGDSTADDR`` option tells, for each
datagram, where it was going. The first datagram from a caller to a callee opens a *flow*
with two connected transparent sockets:

* ``near``, bound to the callee's address and connected to the caller: later datagrams of the
  caller arrive on it (the kernel's socket lookup finds it before the listener), and the
  callee's answers leave through it, so the caller sees them come from the callee;
* ``far``, bound to the caller's address and connected to the callee: the caller's datagrams
  leave through it, so the callee sees its real caller, and the callee's answers arrive on it.

Each direction of a flow has a ``DelayLine`` of ``buffer_size`` bytes; a datagram that does
not fit is dropped, as a router's full queue would drop it, and counted. A send that the
kernel refuses (full buffer, an ICMP error pending) drops the datagram too. A flow with no
datagram for ``FLOW_IDLE_TIMEOUT`` seconds is closed; past ``MAX_FLOWS``, the least recently
active flow is closed to make room.

Only ``forwarder`` imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final

from .delayline import DelayLine
from .tcp_relay import transparent_socket

__all__ = ["IP_RECVORIGDSTADDR", "FLOW_IDLE_TIMEOUT", "MAX_FLOWS", "UDPRelay"]

log = logging.getLogger(__name__)

#: Linux's ``IP_RECVORIGDSTADDR`` (and the ancillary message type it produces).
IP_RECVORIGDSTADDR: Final = 20
#: Largest datagram relayed (the IPv4 maximum payload).
MAX_DATAGRAM: Final = 65535
#: Seconds without a datagram after which a flow is closed.
FLOW_IDLE_TIMEOUT: Final = 60.0
#: Flows kept at once; a new one beyond closes the least recently active.
MAX_FLOWS: Final = 512

Address = tuple[str, int]


def _original_destination(ancillary: list[tuple[int, int, bytes]]) -> Address | None:
    """The ``sockaddr_in`` of an ``IP_ORIGDSTADDR`` message, as ``(host, port)``."""
    for level, kind, data in ancillary:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port, packed = struct.unpack_from("!H4s", data, 2)
            return socket.inet_ntoa(packed), port
    return None


def _connected(local: Address, remote: Address) -> socket.socket:
    sock = transparent_socket(socket.SOCK_DGRAM)
    try:
        sock.bind(local)
        sock.connect(remote)
    except OSError:
        sock.close()
        raise
    return sock


class _Flow:
    """One caller ↔ callee conversation: two sockets, two delay lines, four pumps."""

    def __init__(self, caller: Address, callee: Address, relay: UDPRelay) -> None:
        self.near = _connected(callee, caller)
        try:
            self.far = _connected(caller, callee)
        except OSError:
            self.near.close()
            raise
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        self._relay = relay
        self.outbound = DelayLine(relay.buffer_size, loop.time)
        self.inbound = DelayLine(relay.buffer_size, loop.time)
        self._tasks = [
            loop.create_task(self._receive(self.near, self.outbound)),
            loop.create_task(self._send(self.outbound, self.far)),
            loop.create_task(self._receive(self.far, self.inbound)),
            loop.create_task(self._send(self.inbound, self.near)),
        ]

    def put(self, line: DelayLine, datagram: bytes) -> None:
        """Queue ``datagram`` on ``line`` (this flow's ``outbound`` or ``inbound``)."""
        self.last = asyncio.get_running_loop().time()
        if not line.put_nowait(datagram, self._relay.delay()):
            self._relay.dropped += 1

    async def _receive(self, sock: socket.socket, line: DelayLine) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                datagram = await loop.sock_recv(sock, MAX_DATAGRAM)
            except ConnectionRefusedError:  # an ICMP error for an earlier datagram
                continue
            self.put(line, datagram)

    async def _send(self, line: DelayLine, sock: socket.socket) -> None:
        while (datagram := await line.get()) is not None:
            try:
                sock.send(datagram)
            except OSError:  # full buffer, or an ICMP error pending: lost, as on a wire
                self._relay.dropped += 1

    async def aclose(self) -> None:
        """Stop the pumps and close both sockets."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.near.close()
        self.far.close()


class UDPRelay:
    """The UDP half of the forwarder: reads the listener and keeps the flows.

    Args:
        listener: The bound transparent UDP socket the router diverts datagrams to.
        delay: Returns the one-way delay in seconds in force now.
        buffer_size: Bytes each direction of a flow may hold.
    """

    def __init__(
        self, listener: socket.socket, delay: Callable[[], float], buffer_size: int
    ) -> None:
        self._listener = listener
        self.delay = delay
        self.buffer_size = buffer_size
        self._flows: dict[tuple[Address, Address], _Flow] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: Flows opened so far.
        self.flows = 0
        #: Datagrams dropped: a full delay line, or a send the kernel refused.
        self.dropped = 0

    def peak_buffered(self) -> int:
        """The most bytes any one direction of a live flow has held."""
        lines = [line for flow in self._flows.values() for line in (flow.outbound, flow.inbound)]
        return max((line.peak for line in lines), default=0)

    async def run(self) -> None:
        """Relay until cancelled; then close every flow."""
        loop = asyncio.get_running_loop()
        self._listener.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
        loop.add_reader(self._listener.fileno(), self._read_listener)
        try:
            while True:
                await asyncio.sleep(FLOW_IDLE_TIMEOUT / 4)
                idle_since = loop.time() - FLOW_IDLE_TIMEOUT
                for key in [key for key, flow in self._flows.items() if flow.last < idle_since]:
                    self._close(key)
        finally:
            loop.remove_reader(self._listener.fileno())
            await asyncio.gather(*(flow.aclose() for flow in self._flows.values()))
            await asyncio.gather(*self._closing)

    def _read_listener(self) -> None:
        while True:
            try:
                datagram, ancillary, _, caller = self._listener.recvmsg(MAX_DATAGRAM, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("listener: %r", exc)
                continue
            callee = _original_destination(ancillary)
            if callee is None:
                continue  # sent to the forwarder itself, not diverted: not ours to relay
            flow = self._flow(caller, callee)
            if flow is not None:
                flow.put(flow.outbound, datagram)

    def _flow(self, caller: Address, callee: Address) -> _Flow | None:
        key = (caller, callee)
        if key not in self._flows:
            if len(self._flows) >= MAX_FLOWS:
                self._close(min(self._flows, key=lambda k: self._flows[k].last))
            try:
                self._flows[key] = _Flow(caller, callee, self)
            except OSError as exc:
                log.warning("cannot relay %s -> %s: %r", caller, callee, exc)
                self.dropped += 1
                return None
            self.flows += 1
        return self._flows[key]

    def _close(self, key: tuple[Address, Address]) -> None:
        task = asyncio.get_running_loop().create_task(self._flows.pop(key).aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
