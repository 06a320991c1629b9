"""QUIC's flow control bounds what a Peer that does not read holds.

The bound endpoint's receive credit follows what is taken from it (``receive()``): a remote
flooding it stops once ``receive_window`` bytes are unread, its sender waits, and nothing is
lost when the reader catches up.
"""

from __future__ import annotations

import asyncio

import pytest

from callosum_like.lower.base import Received
from callosum_like.lower.quic_link import EVENT_OVERHEAD

from .conformance import next_event
from .test_quic_bad_input import served

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

WINDOW = 256 * 1024
MESSAGE = 16 * 1024
COUNT = 1024  # 16 MiB: far more than the window and the sender's buffer together


async def until_stalled(progress: list[int]) -> None:
    """Wait until ``progress[0]`` has not moved for a while (the sender is held back)."""
    last = -1
    while progress[0] != last:
        last = progress[0]
        await asyncio.sleep(0.5)


async def test_a_flood_to_a_reader_that_stops_is_bounded_by_the_receive_window() -> None:
    async with served(receive_window=WINDOW) as (server, client, _):
        [link] = server.links.values()
        sent = [0]

        async def flood() -> None:
            for number in range(COUNT):
                await client.send([number.to_bytes(4, "big") + bytes(MESSAGE)])
                sent[0] += 1

        flooding = asyncio.create_task(flood())
        try:
            await until_stalled(sent)
            assert sent[0] < COUNT, "the sender was never held back"
            # Unread: at most the window, plus the last raise's slack and one message.
            assert link.unread <= WINDOW + WINDOW // 8 + MESSAGE + EVENT_OVERHEAD
            received = 0
            while received < COUNT:  # catch up: everything arrives, in order
                event = await next_event(server, Received)
                assert event.peer == link.key
                assert int.from_bytes(event.frames[0][:4], "big") == received
                received += 1
            await flooding
            assert link.unread == 0
        finally:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)
