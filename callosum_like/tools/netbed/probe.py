"""Small measuring programs to run inside a bed's hosts: an echo server and its clients.

Run as ``python -m callosum_like.tools.netbed.probe COMMAND ...`` inside a host (for instance
with ``NetBed.spawn``). Theory of operation: one server and four clients, speaking the tools'
line protocol (``READY <address>`` once serving, ``RESULT <json>`` with the figures), so a
test or a tool can start them with ``supervisor.ChildProcess`` and read what they measured.

* ``echo --bind HOST``: serves TCP and UDP on one port until stdin ends. A TCP connection
  first receives ``PEER ip:port`` (the address the server sees it come from) and then gets
  every byte back; each UDP datagram is sent back as it is, except two questions: ``count``
  is answered with ``count N`` (the datagrams echoed so far), ``peer`` with ``peer ip:port``.
* ``rtt --to HOST:PORT --proto tcp|udp --count N``: N small round trips, one at a time;
  ``{"peer": ..., "rtts_ms": [...], "lost": k}`` (a UDP datagram not back in
  ``--wait-timeout`` seconds is lost; ``peer`` is where the server saw the client).
* ``loss --to HOST:PORT --count N``: N UDP datagrams in bursts; ``{"sent": N, "arrived": j,
  "received": k}``: j reached the server (its count), k came back to the client.
* ``stream --to HOST:PORT --size BYTES``: random bytes over TCP, the echo read back at the
  same time and compared; ``{"bytes", "seconds", "intact"}`` (``seconds`` from the first
  byte sent to the last byte back).
* ``ticker --to HOST:PORT --count N --interval S``: one TCP connection, a numbered line every
  S seconds, each one's sending and its echo's arrival time kept; says ``READY`` at the first
  echo, then gives ``{"peer": ..., "ticks": [[n, sent, received], ...]}`` once all N are back.
  The times are ``time.monotonic()``, the same clock in every process of the machine.

A client that fails (cannot connect within ``--connect-timeout`` seconds, a reset...) prints
``RESULT {"error": "<repr>", "errno": "<name or null>"}`` and exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Final, cast

from ..child import ignore_sigint, say_ready, wait_for_stdin_eof

__all__ = ["CONNECT_TIMEOUT", "BURST", "main"]

#: Seconds a client waits for its TCP connection, unless told otherwise.
CONNECT_TIMEOUT: Final = 5.0
#: UDP datagrams sent at once by ``loss`` before it waits for their echoes.
BURST: Final = 100
#: Bytes written at once by ``stream``.
STREAM_CHUNK: Final = 64 * 1024
#: Seconds ``loss`` waits, after the last echo of a burst came, for more before moving on.
QUIET_TIME: Final = 0.1
#: The UDP datagrams that ask the echo server a question rather than being echoed: how many
#: datagrams it has echoed, and the address it sees the asker come from.
QUESTIONS: Final = (b"count", b"peer")
#: Times a question is asked (each ask and answer may be lost too), ``QUIET_TIME`` apart.
ASK_ATTEMPTS: Final = 100


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.echoed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data == b"count":
            self.transport.sendto(b"count %d" % self.echoed, addr)
        elif data == b"peer":
            self.transport.sendto(f"peer {addr[0]}:{addr[1]}".encode(), addr)
        else:
            self.echoed += 1
            self.transport.sendto(data, addr)


async def _echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    host, port = writer.get_extra_info("peername")[:2]
    try:
        writer.write(f"PEER {host}:{port}\n".encode())
        while data := await reader.read(STREAM_CHUNK):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass  # the client went away: nothing to echo to
    finally:
        writer.close()


async def serve_echo(bind: str) -> None:
    """Serve TCP and UDP echo on one port of ``bind`` until stdin ends."""
    server = await asyncio.start_server(_echo_stream, bind, 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        _Echo, local_addr=(bind, port)
    )
    try:
        async with server:
            say_ready(f"{bind}:{port}")
            await wait_for_stdin_eof()
    finally:
        transport.close()


async def _connect(
    to: tuple[str, int], timeout: float = CONNECT_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(*to)
        peer = (await reader.readline()).decode().strip().removeprefix("PEER ")
    return reader, writer, peer


async def tcp_rtt(to: tuple[str, int], count: int, connect_timeout: float) -> dict[str, Any]:
    """``count`` one-line round trips over one TCP connection."""
    reader, writer, peer = await _connect(to, connect_timeout)
    rtts = []
    try:
        for n in range(count):
            started = time.perf_counter()
            writer.write(f"{n}\n".encode())
            await reader.readuntil(b"\n")
            rtts.append((time.perf_counter() - started) * 1000)
    finally:
        writer.close()
    return {"peer": peer, "rtts_ms": rtts, "lost": 0}


class _Replies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.arrived = asyncio.Event()
        self.answers: dict[bytes, str] = {}  # the echo server's answers to ``QUESTIONS``

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        first, _, rest = data.partition(b" ")
        if first in QUESTIONS:
            self.answers[first] = rest.decode()
        else:
            self.seen.add(int(first))
        self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier datagram: it counts as lost


async def _udp(to: tuple[str, int]) -> tuple[asyncio.DatagramTransport, _Replies]:
    return await asyncio.get_running_loop().create_datagram_endpoint(_Replies, remote_addr=to)


async def _wait_for(replies: _Replies, wanted: set[int], quiet: float) -> None:
    """Wait until every number in ``wanted`` is back, or none came for ``quiet`` seconds."""
    while not wanted <= replies.seen:
        replies.arrived.clear()
        try:
            async with asyncio.timeout(quiet):
                await replies.arrived.wait()
        except TimeoutError:
            return


async def udp_rtt(to: tuple[str, int], count: int, wait: float) -> dict[str, Any]:
    """``count`` UDP round trips, one at a time; one not back within ``wait`` s is lost."""
    transport, replies = await _udp(to)
    rtts = []
    try:
        for n in range(count):
            started = time.perf_counter()
            transport.sendto(f"{n} ping".encode())
            await _wait_for(replies, {n}, wait)
            if n in replies.seen:
                rtts.append((time.perf_counter() - started) * 1000)
        peer = await _ask(transport, replies, b"peer")
    finally:
        transport.close()
    return {"peer": peer, "rtts_ms": rtts, "lost": count - len(rtts)}


async def _ask(transport: asyncio.DatagramTransport, replies: _Replies, question: bytes) -> str:
    """The echo server's answer to ``question`` (one of ``QUESTIONS``), asked until it comes."""
    replies.answers.pop(question, None)
    for _ in range(ASK_ATTEMPTS):
        transport.sendto(question)
        replies.arrived.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(QUIET_TIME):
                while question not in replies.answers:
                    await replies.arrived.wait()
                    replies.arrived.clear()
        if question in replies.answers:
            return replies.answers[question]
    raise TimeoutError(f"no answer to {question!r} in {ASK_ATTEMPTS} attempts")


async def udp_loss(to: tuple[str, int], count: int) -> dict[str, Any]:
    """``count`` datagrams in bursts of ``BURST``; how many arrived, and came back."""
    transport, replies = await _udp(to)
    try:
        before = int(await _ask(transport, replies, b"count"))
        for first in range(0, count, BURST):
            burst = range(first, min(first + BURST, count))
            for n in burst:
                transport.sendto(f"{n} {'x' * 100}".encode())
            await _wait_for(replies, set(burst), QUIET_TIME)
        arrived = int(await _ask(transport, replies, b"count")) - before
    finally:
        transport.close()
    return {"sent": count, "arrived": arrived, "received": len(replies.seen & set(range(count)))}


async def stream(to: tuple[str, int], size: int) -> dict[str, Any]:
    """``size`` random bytes sent and read back at once; timing and whether they match."""
    reader, writer, peer = await _connect(to)
    data = os.urandom(size)
    started = time.perf_counter()

    async def send() -> None:
        for offset in range(0, size, STREAM_CHUNK):
            writer.write(data[offset : offset + STREAM_CHUNK])
            await writer.drain()

    try:
        sending = asyncio.create_task(send())
        back = await reader.readexactly(size)
        await sending
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    intact = hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    return {"peer": peer, "bytes": size, "seconds": seconds, "intact": intact}


async def ticker(to: tuple[str, int], count: int, interval: float) -> dict[str, Any]:
    """Numbered lines every ``interval`` s; when each echo arrived (see the docstring)."""
    reader, writer, peer = await _connect(to)
    ticks: list[list[float]] = []
    sent: list[float] = []

    async def send() -> None:
        for n in range(count):
            sent.append(time.monotonic())
            writer.write(f"{n}\n".encode())
            await writer.drain()
            await asyncio.sleep(interval)

    try:
        sending = asyncio.create_task(send())
        for _ in range(count):
            n = int(await reader.readuntil(b"\n"))
            ticks.append([n, sent[n], time.monotonic()])
            if len(ticks) == 1:
                say_ready(peer)
        await sending
    finally:
        writer.close()
    return {"peer": peer, "ticks": ticks}


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m callosum_like.tools.netbed.probe")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("echo").add_argument("--bind", default="0.0.0.0")
    for name in ("rtt", "loss", "stream", "ticker"):
        command = commands.add_parser(name)
        command.add_argument("--to", type=_address, required=True)
        command.add_argument("--count", type=int, default=20)
    rtt = commands.choices["rtt"]
    rtt.add_argument("--proto", choices=("tcp", "udp"), default="udp")
    rtt.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT)
    rtt.add_argument("--wait-timeout", type=float, default=2.0)
    commands.choices["stream"].add_argument("--size", type=int, default=1_000_000)
    commands.choices["ticker"].add_argument("--interval", type=float, default=0.02)
    return parser


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "rtt" and args.proto == "tcp":
        return await tcp_rtt(args.to, args.count, args.connect_timeout)
    if args.command == "rtt":
        return await udp_rtt(args.to, args.count, args.wait_timeout)
    if args.command == "loss":
        return await udp_loss(args.to, args.count)
    if args.command == "stream":
        return await stream(args.to, args.size)
    return await ticker(args.to, args.count, args.interval)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one probe command; the exit status (1 when a client could not connect)."""
    args = _parser().parse_args(argv)
    ignore_sigint()
    if args.command == "echo":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_echo(args.bind))
        return 0
    try:
        result = asyncio.run(_client(args))
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        code = getattr(exc, "errno", None)
        failure = {"error": repr(exc), "errno": errno.errorcode.get(code) if code else None}
        print(f"RESULT {json.dumps(failure)}", flush=True)
        return 1
    print(f"RESULT {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
