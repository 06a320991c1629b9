"""Heartbeats at fleet scale: an idle link costs the bound side one message in, one out.

A connecting peer pings every ``heartbeat_interval``; the bound side answers, and pings a
remote itself only once that remote has been quiet for an interval (and a tick of its
heartbeat loop). Both transports, a raw remote that pings as a Peer would.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import callosum_like as cl
from callosum_like.wire import messages as m

from .conftest import bind_address
from .rawpeer import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

INTERVAL = 0.2


async def test_the_bound_side_pings_only_a_remote_that_went_quiet(
    transport_kind: str, peers: contextlib.AsyncExitStack
) -> None:
    server = await peers.enter_async_context(
        cl.Peer(
            bind=bind_address(transport_kind),
            heartbeat_interval=INTERVAL,
            heartbeat_timeout=10 * INTERVAL,
        )
    )
    raw = await RawClient.connect(server, transport_kind)
    try:
        await raw.handshake("agent-1")
        # Pinging four times an interval, for five intervals: every answer is a Pong,
        # never a Ping of the server's own.
        for _ in range(20):
            await raw.send(m.Ping())
            assert await raw.receive() == m.Pong()
            await asyncio.sleep(INTERVAL / 4)
        # Quiet now: the server pings within an interval and a tick (and some slack).
        assert await raw.receive(timeout=10 * INTERVAL) == m.Ping()
        assert server.peers == {"agent-1"}
    finally:
        await raw.aclose()
