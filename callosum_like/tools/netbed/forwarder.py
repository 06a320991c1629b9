"""The delay forwarder: a process in the router namespace that delays TCP and UDP between hosts.

Run as ``ip netns exec <router> python -m callosum_like.tools.netbed.forwarder --control PATH``
(``bed.NetBed.delay`` does this). Theory of operation: the kernel has no ``netem``, so the
delay is made in userspace. The forwarder binds one transparent TCP listener and one
transparent UDP socket on the router, prints ``READY tcp=PORT udp=PORT`` for its parent, and
the parent then adds the nftables rules that divert host-to-host TCP connections and UDP
datagrams to those ports (TPROXY; ``plan.divert_ruleset``). ``tcp_relay`` and ``udp_relay``
carry them on, each chunk or datagram held for the delay in force when it arrived.

The delay can change while traffic flows: the parent connects to the Unix socket at
``--control`` (a path in the file system, so it is reachable from any network namespace) and
sends one command per line, each answered with one line:

* ``delay MS`` sets the one-way delay in milliseconds (``ok MS``);
* ``stats`` answers a JSON object: ``delay_ms``, ``tcp_connections``, ``udp_flows``,
  ``udp_dropped``, and ``peak_buffered`` (the most bytes any one direction has held).

Anything else is answered with ``error ...``. The forwarder stops when its stdin reaches
end-of-file (the parent's request, or the parent's death), as the tools' children do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..child import ignore_sigint, wait_for_stdin_eof
from .tcp_relay import CHUNK_SIZE, TCPRelay, transparent_socket
from .udp_relay import UDPRelay

__all__ = ["DEFAULT_BUFFER_SIZE", "MAX_DELAY_MS", "Forwarder", "main"]

#: Bytes each direction of a relayed connection or flow may hold: with the sockets' own
#: buffers this bounds a TCP connection's throughput to about this much per delay.
DEFAULT_BUFFER_SIZE: Final = 1024 * 1024
#: The largest delay accepted, in milliseconds (a minute: beyond that, it is an outage).
MAX_DELAY_MS: Final = 60_000.0
#: Bytes of one control command line.
MAX_COMMAND_SIZE: Final = 1024


def parse_delay(text: str) -> float:
    """A delay in milliseconds from ``text``, checked against ``[0, MAX_DELAY_MS]``.

    Raises:
        ValueError: Not a number, or out of range.
    """
    value = float(text)
    if not 0 <= value <= MAX_DELAY_MS:
        raise ValueError(f"delay must be within 0..{MAX_DELAY_MS:g} ms, not {text}")
    return value


class Forwarder:
    """The forwarder's state: the delay in force and the two relays.

    Args:
        delay_ms: The initial one-way delay in milliseconds.
        buffer_size: Bytes each direction of a connection or flow may hold.
    """

    def __init__(self, delay_ms: float, buffer_size: int) -> None:
        self.delay_ms = delay_ms
        self.tcp = TCPRelay(self.delay, buffer_size)
        self._buffer_size = buffer_size

    def delay(self) -> float:
        """The one-way delay in force now, in seconds."""
        return self.delay_ms / 1000

    def answer(self, command: str, udp: UDPRelay) -> str:
        """The answer line to one control ``command`` (see the module's docstring)."""
        match command.split():
            case ["delay", value]:
                try:
                    self.delay_ms = parse_delay(value)
                except ValueError as exc:
                    return f"error {exc}"
                return f"ok {self.delay_ms:g}"
            case ["stats"]:
                stats = {
                    "delay_ms": self.delay_ms,
                    "tcp_connections": self.tcp.connections,
                    "udp_flows": udp.flows,
                    "udp_dropped": udp.dropped,
                    "peak_buffered": max(self.tcp.peak_buffered(), udp.peak_buffered()),
                }
                return json.dumps(stats)
            case _:
                return f"error unknown command {command!r}"

    async def serve(self, control: Path) -> None:
        """Bind, say ``READY``, relay until stdin ends; then stop everything."""
        tcp_sock = transparent_socket(socket.SOCK_STREAM)
        udp_sock = transparent_socket(socket.SOCK_DGRAM)
        with tcp_sock, udp_sock:
            tcp_sock.bind(("0.0.0.0", 0))
            udp_sock.bind(("0.0.0.0", 0))
            udp = UDPRelay(udp_sock, self.delay, self._buffer_size)
            tcp_server = await asyncio.start_server(
                self.tcp.handle, sock=tcp_sock, limit=CHUNK_SIZE
            )
            control_server = await asyncio.start_unix_server(
                lambda r, w: self._control(r, w, udp), path=str(control)
            )
            async with tcp_server, control_server:
                udp_task = asyncio.create_task(udp.run())
                print(
                    f"READY tcp={tcp_sock.getsockname()[1]} udp={udp_sock.getsockname()[1]}",
                    flush=True,
                )
                try:
                    await wait_for_stdin_eof()
                finally:  # the servers would wait for open connections: end them first
                    udp_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await udp_task
                    await self.tcp.aclose()

    async def _control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, udp: UDPRelay
    ) -> None:
        try:
            while line := await reader.readline():
                if len(line) > MAX_COMMAND_SIZE:
                    break
                writer.write(self.answer(line.decode(errors="replace").strip(), udp).encode())
                writer.write(b"\n")
                await writer.drain()
        except (OSError, ValueError):  # the parent went away, or sent an overlong line
            pass
        finally:
            writer.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the forwarder until stdin ends."""
    parser = argparse.ArgumentParser(prog="python -m callosum_like.tools.netbed.forwarder")
    parser.add_argument("--control", type=Path, required=True, help="Unix socket for commands")
    parser.add_argument("--delay-ms", type=parse_delay, default=0.0, help="one-way delay")
    parser.add_argument(
        "--buffer-size", type=int, default=DEFAULT_BUFFER_SIZE, help="bytes per direction"
    )
    args = parser.parse_args(argv)
    if args.buffer_size < 1:
        parser.error("--buffer-size must be positive")
    ignore_sigint()
    try:
        asyncio.run(Forwarder(args.delay_ms, args.buffer_size).serve(args.control))
    finally:
        args.control.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
