"""QUIC's flow control bounds what a Peer that does not read holds; a cancel resets.

The bound endpoint's receive credit follows what is taken from it (``receive()``): a remote
flooding it stops once ``receive_window`` bytes are unread, its sender waits, and nothing is
lost when the reader catches up. Cancelling an upload resets its stream: what the sender
still held is dropped, the receiver's credit for it comes back, and the link goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from callosum_like.lower.base import CONNECTED_KEY, Received
from callosum_like.lower.quic_link import EVENT_OVERHEAD
from callosum_like.wire import messages as m
from callosum_like.wire.codec import decode, encode, pack_body

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


async def test_a_cancelled_upload_resets_its_stream_and_the_link_goes_on() -> None:
    async with served(receive_window=WINDOW) as (server, client, _):
        [link] = server.links.values()
        sender = client.links[CONNECTED_KEY]
        await client.send(encode(m.Call(id=1, method="up", upload=True)))
        item = encode(m.UploadItem(id=1, body=pack_body(bytes(32 * 1024))))
        sent = [0]

        async def upload() -> None:
            for _ in range(512):  # 16 MiB: the server reads none of it
                await client.send(item)
                sent[0] += 1

        uploading = asyncio.create_task(upload())
        await until_stalled(sent)
        uploading.cancel()
        await asyncio.gather(uploading, return_exceptions=True)
        held = sender.unacked()
        assert held > 2 * 2**20  # the sender holds what the server's credit keeps back
        await client.send(encode(m.Cancel(id=1)))
        async with asyncio.timeout(10):  # the reset is acknowledged: its data is dropped
            while sender.unacked() > 64 * 1024:
                await asyncio.sleep(0.05)
        # The receiver: the call, what arrived of its upload, then the Cancel (not waiting
        # for the items that never come); then keyed calls, more than the window in all
        # (the reset stream's credit came back).
        calls = [
            encode(m.Call(id=i, method="k", order_key="k", body=pack_body(bytes(48 * 1024))))
            for i in range(2, 10)
        ]
        sending = asyncio.gather(*(client.send(call) for call in calls))
        kinds, ids = [], []
        while kinds.count("Call") < 1 + len(calls):
            msg: Any = decode((await next_event(server, Received)).frames, max_body_size=2**20)
            kinds.append(type(msg).__name__)
            ids.append(msg.id)
        await sending
        assert kinds[0] == "Call"
        cancel = kinds.index("Cancel")
        assert set(kinds[1:cancel]) <= {"UploadItem"}
        assert kinds[cancel + 1 :] == ["Call"] * len(calls)
        assert ids[cancel + 1 :] == list(range(2, 10))  # in their key's order
        assert cancel - 1 < sent[0]  # some items never arrived: their stream was reset
        assert link.unread == 0
