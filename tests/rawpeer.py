"""A remote that speaks the wire protocol by hand, for tests of misbehaving peers.

It uses a transport ``Connection`` and the codec directly, so a test can send garbage, go
silent, or answer with anything at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from callosum_like.lower.base import Connection, Received
from callosum_like.lower.registry import transport_for
from callosum_like.wire import messages as m
from callosum_like.wire.codec import ChunkedHead, decode, encode

from .conftest import connect_address

if TYPE_CHECKING:
    import callosum_like as cl

MAX = 256 * 2**20


class RawClient:
    """A connecting remote under full test control."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, server: Any, kind: str) -> RawClient:
        address = _address(connect_address(server))
        conn = await transport_for(address).connect(address, max_frame_size=MAX)
        return cls(conn)

    async def send(self, msg: m.Message) -> None:
        await self.conn.send(encode(msg))

    async def send_frames(self, frames: list[bytes]) -> None:
        await self.conn.send(frames)

    async def receive(self, timeout: float = 5.0) -> m.Message:
        msg = await self.receive_any(timeout)
        assert not isinstance(msg, ChunkedHead), msg
        return msg

    async def receive_any(self, timeout: float = 5.0) -> m.Message | ChunkedHead:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.conn.receive()
                if isinstance(event, Received):
                    return decode(event.frames, max_body_size=MAX)

    async def handshake(self, identity: str = "raw") -> m.Welcome:
        await self.send(m.Hello(identity=identity, max_body_size=MAX))
        welcome = await self.receive()
        assert isinstance(welcome, m.Welcome)
        return welcome

    async def aclose(self) -> None:
        await self.conn.aclose()


def _address(address: Any) -> Any:
    from callosum_like.addresses import ZeroMQAddress

    return ZeroMQAddress(address) if isinstance(address, str) else address


def gated_echo() -> tuple[Callable[[cl.Request], Awaitable[Any]], asyncio.Event]:
    """A handler that echoes once the returned event is set, and that event."""
    gate = asyncio.Event()

    async def wait(request: cl.Request) -> Any:
        await gate.wait()
        return request.body

    return wait, gate
