"""The benchmark's child processes: a peer script's command line, and this project's pair.

Theory of operation: a step's *server* binds 127.0.0.1 port 0, says ``READY <address>`` and
serves ``echo`` and a ``stream`` until its stdin closes (``child.announce``); its *client*
connects, measures one workload (``measure.measure``), prints ``RESULT <json>`` and exits.
``peer_main`` is that command line for a peer script in ``bench/peers/``, which brings its own
server coroutine and client adapter; ``run_bench_server``/``run_bench_client`` are this
project's (``bench-server``/``bench-client``). Both run on uvloop when asked or installed
(``child.run_loop``).

Only ``__main__``, the peer scripts and the benchmark's modules import this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, TypeAlias, cast

from ...peer import Peer
from ...request import Body, Handler, Request
from ..child import (
    announce,
    bind_address,
    connect_address,
    ignore_sigint,
    run_loop,
    transport_of,
)
from .intercepted import KINDS, chain
from .measure import EchoClient, Payload, ProcessProbe, measure
from .workloads import Workload

__all__ = [
    "CALL_TIMEOUT",
    "Connect",
    "peer_main",
    "add_server_arguments",
    "add_client_arguments",
    "add_interceptor_argument",
    "run_bench_server",
    "run_bench_client",
]

#: Seconds any single call of a benchmark may take before the step is declared broken.
CALL_TIMEOUT: Final = 120.0
#: Opens a client connected to the address the server printed.
Connect: TypeAlias = Callable[[str], AbstractAsyncContextManager[EchoClient]]


def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark server process."""
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (a server)")


def add_interceptor_argument(parser: argparse.ArgumentParser) -> None:
    """``--interceptors`` of this project's server and client (``intercepted``)."""
    parser.add_argument("--interceptors", choices=KINDS, default="none")


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark client process."""
    add_server_arguments(parser)
    parser.add_argument("--connect", required=True, help="the address the server printed")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--workload", required=True, help="a Workload as JSON")
    parser.add_argument(
        "--call-timeout", type=float, default=CALL_TIMEOUT, help="seconds one call may take"
    )


def _serve_main(serve: Coroutine[Any, Any, None], loop: str) -> int:
    ignore_sigint()
    run_loop(serve, loop)
    return 0


def _client_main(connect: Connect, args: argparse.Namespace) -> int:
    workload = Workload(**json.loads(args.workload))
    probes = {"client": ProcessProbe(os.getpid()), "server": ProcessProbe(args.server_pid)}
    report = run_loop(_client_session(connect, args.connect, workload, probes), args.loop)
    print("RESULT " + json.dumps(report), flush=True)
    return 0


async def _client_session(
    connect: Connect, address: str, workload: Workload, probes: dict[str, ProcessProbe]
) -> dict[str, object]:
    async with connect(address) as client:
        report: dict[str, object] = {"loop": _loop_name(), "stream_kind": client.stream_kind}
        if workload.kind == "stream" and not client.stream_kind:
            return {**report, "skipped": "no streams"}
        return {**report, "metrics": await measure(client, workload, probes)}


def peer_main(
    serve: Callable[[], Coroutine[Any, Any, None]],
    connect: Connect,
    argv: Sequence[str] | None = None,
) -> int:
    """The command line of a peer script: ``server [options]`` or ``client [options]``.

    Args:
        serve: Binds 127.0.0.1 port 0, then awaits ``announce(address)``.
        connect: Opens a client adapter connected to an address.
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description="A benchmark server or client process.")
    roles = parser.add_subparsers(dest="role", required=True)
    add_server_arguments(roles.add_parser("server"))
    add_client_arguments(roles.add_parser("client"))
    args = parser.parse_args(argv)
    if args.role == "server":
        return _serve_main(serve(), args.loop)
    return _client_main(connect, args)


def run_bench_server(args: argparse.Namespace) -> int:
    """``bench-server``: serve ``echo`` and the ``stream`` generator over ``args.transport``."""
    return _serve_main(_serve_like(args.transport, args.interceptors, args.host), args.loop)


def run_bench_client(args: argparse.Namespace) -> int:
    """``bench-client``: measure one workload against a ``bench-server``."""
    transport: str = args.transport
    interceptors: str = args.interceptors

    def connect(address: str) -> AbstractAsyncContextManager[EchoClient]:
        return _connect_like(transport, address, interceptors, args.call_timeout)

    return _client_main(connect, args)


async def _serve_like(transport: str, interceptors: str, host: str = "127.0.0.1") -> None:
    async def echo(request: Request) -> Body:
        return request.body

    async def stream(request: Request) -> AsyncIterator[Body]:
        size, chunk_size = request.body
        chunk = os.urandom(chunk_size)
        for _ in range(size // chunk_size):
            yield chunk

    async with Peer(
        bind=bind_address(transport, host=host),
        identity="bench-server",
        transport=transport_of(transport, bound=True),
        interceptors=chain(interceptors),
    ) as server:
        server.handle_function("echo", echo)
        server.handle_function("stream", cast("Handler", stream))  # Peer's hint omits streams
        await announce(server.address)


class _LikeClient:
    """The ``EchoClient`` of this project."""

    stream_kind = "stream"

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    async def echo(self, body: bytes) -> Payload:
        reply = await self._peer.invoke("echo", body)
        assert isinstance(reply, bytes)
        return reply

    async def stream(self, size: int, chunk_size: int) -> AsyncIterator[Payload]:
        async for chunk in self._peer.stream("stream", [size, chunk_size]):
            yield chunk


@contextlib.asynccontextmanager
async def _connect_like(
    transport: str, address: str, interceptors: str, call_timeout: float = CALL_TIMEOUT
) -> AsyncIterator[EchoClient]:
    async with Peer(
        connect=connect_address(transport, address),
        transport=transport_of(transport, bound=False),
        identity="bench-client",
        invoke_timeout=call_timeout,
        interceptors=chain(interceptors),
    ) as peer:
        yield _LikeClient(peer)
