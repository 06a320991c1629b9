"""The soak's server process (``python -m callosum_like soak-server``): one server life.

Theory of operation: it binds the port the parent chose (the same for every life, so clients
reconnect by themselves after a kill), with small limits so that the flood is refused rather
than held, prints ``READY`` and serves ``echo``, ``slow``, ``fail``, ``count`` (a stream),
``call_back`` (it calls the client's ``double``) and ``stats`` until its stdin closes or the
parent kills it with SIGKILL.

Only ``__main__`` and the soak's other modules import this module.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any, Final

from ...peer import Peer
from ...request import Body, Request
from ..child import TRANSPORTS, announce, bind_address, ignore_sigint

__all__ = [
    "SERVER_IDENTITY",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "serve_soak",
    "run_soak_server",
    "add_soak_server_arguments",
]

#: The server's limits: small, so that the flood is refused rather than held.
SERVER_MAX_CONCURRENCY: Final = 64
SERVER_MAX_PENDING: Final = 1000
#: Heartbeat of every peer of the soak: a dead link is noticed within seconds.
HEARTBEAT_INTERVAL: Final = 1.0
HEARTBEAT_TIMEOUT: Final = 4.0
SERVER_IDENTITY: Final = "soak-server"


async def _echo(request: Request) -> Body:
    return request.body


async def _slow(request: Request) -> Body:
    await asyncio.sleep(0.005)
    return request.body


async def _fail(request: Request) -> Body:
    raise ValueError("as asked")


async def _count(request: Request) -> Any:
    for item in range(int(request.body)):
        yield item


async def serve_soak(transport: str, port: int) -> int:
    """Serve the soak's methods at ``port`` until stdin closes (or the process is killed)."""
    server = Peer(
        bind=bind_address(transport, port),
        identity=SERVER_IDENTITY,
        max_concurrency=SERVER_MAX_CONCURRENCY,
        max_pending=SERVER_MAX_PENDING,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )

    async def call_back(request: Request) -> Body:
        return await server.invoke("double", request.body, to=request.peer_id, timeout=5)

    async def stats(request: Request) -> Body:
        snapshot = server.statistics()
        return {name: _plain(getattr(snapshot, name)) for name in snapshot.__slots__}

    for name, handler in [("echo", _echo), ("slow", _slow), ("fail", _fail), ("count", _count)]:
        server.handle_function(name, handler)
    server.handle_function("call_back", call_back)
    server.handle_function("stats", stats)
    async with server:
        await announce(server.address)
    return 0


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def run_soak_server(args: argparse.Namespace) -> int:
    """The ``soak-server`` subcommand: one server life."""
    ignore_sigint()
    return asyncio.run(serve_soak(args.transport, args.port))


def add_soak_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the hidden ``soak-server``."""
    parser.add_argument("--transport", choices=TRANSPORTS, required=True)
    parser.add_argument("--port", type=int, required=True)
