"""Session resumption over QUIC: numbered messages travel in sequence on the control lane.

The test proxy (tests/netproxy.py) relays TCP only, so the resumption suite
(tests/test_peer_resume.py) skips QUIC; here the client's QUIC connection is dropped from
below (``Connection.disconnect``, as its heartbeat would) while calls are in flight both
ways, a small one and a chunked one, and the session resumes on the new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.lower.base import CONNECTED_KEY, Connection

from .conftest import QUICTestTransport, bind_address, connect_address

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]


class KeepingQUIC(QUICTestTransport):
    """The test QUIC transport, keeping each connection it makes for the test to reach."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.connections: list[Connection] = []

    async def connect(self, *args: Any, **kwargs: Any) -> Any:
        self.connections.append(await super().connect(*args, **kwargs))
        return self.connections[-1]


async def test_calls_in_flight_complete_across_a_dropped_quic_connection(
    peers: contextlib.AsyncExitStack,
) -> None:
    runs: list[Any] = []
    release = asyncio.Event()

    async def held(request: cl.Request) -> Any:
        runs.append(len(request.body))
        await release.wait()
        return request.body

    server = await peers.enter_async_context(
        cl.Peer(bind=bind_address("quic"), identity="server", resume_timeout=10, chunk_size=65536)
    )
    server.handle_function("held", held)
    keeping = KeepingQUIC()
    connections = keeping.connections
    client = await peers.enter_async_context(
        cl.Peer(
            connect=connect_address(server),
            identity="agent-1",
            transport=keeping,
            resume_timeout=10,
            chunk_size=65536,
        )
    )
    big = bytes(range(256)) * 4096  # 1 MiB: chunked both ways
    calls = [asyncio.create_task(client.invoke("held", body)) for body in (b"small", big)]
    async with asyncio.timeout(10):
        while len(runs) < 2:
            await asyncio.sleep(0.01)
    await connections[0].disconnect(CONNECTED_KEY)  # the connection goes; the session stays
    async with asyncio.timeout(10):
        while client.statistics().sessions_resumed < 1:
            await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*calls) == [b"small", big]
    assert sorted(runs) == [5, len(big)]  # each handler ran once
    assert server.statistics().sessions_resumed == 1
