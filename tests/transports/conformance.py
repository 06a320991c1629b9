"""The transport conformance suite: the executable form of ``lower/base.py``'s contract.

A transport's test module subclasses ``TransportConformance`` and provides ``transport()``,
``bind_address()`` and ``connect_address(server)``. Every test here then runs against it.
Capabilities a transport may lack are declared on the connection (``reports_disconnects``)
or by the subclass (``client_reports_disconnects``), and the tests check whichever applies.

A transport whose connected endpoints reconnect subclasses ``ReconnectingTransportConformance``
instead, which adds the reconnection tests: a transport that cannot reconnect never collects
them (rather than passing or skipping them). Both suites check that the connection's
``reconnects`` capability is the one the subclass declared.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import zmq

from callosum_like.errors import PeerClosedError, PeerDisconnectedError
from callosum_like.lower.base import (
    CONNECTED_KEY,
    RECEIVE_QUEUE_SIZE,
    Connected,
    Connection,
    Disconnected,
    Received,
    Transport,
)

MAX_FRAME = 32 * 2**20
WAIT = 5.0


async def next_event(conn: Connection, kind: type | None = None) -> Any:
    """The next event (of ``kind``, skipping others), within ``WAIT`` seconds."""
    async with asyncio.timeout(WAIT):
        while True:
            event = await conn.receive()
            if kind is None or isinstance(event, kind):
                return event


async def post(conn: Connection, frames: list[bytes], *, to: bytes | None = None) -> None:
    """``conn.post``, and what is left of the send, if anything."""
    waiting = conn.post(frames, to=to)
    if waiting is not None:
        await waiting


async def nothing_arrives(conn: Connection, within: float = 0.3) -> bool:
    try:
        async with asyncio.timeout(within):
            await conn.receive()
    except TimeoutError:
        return True
    return False


async def rebind(transport: Transport, address: Any) -> Connection:
    """Bind ``address`` again, retrying while the previous socket releases it.

    ZeroMQ closes a socket in its I/O thread, a moment after ``close()`` returns.
    """
    async with asyncio.timeout(WAIT):
        while True:
            try:
                return await transport.bind(address, max_frame_size=MAX_FRAME)
            except (OSError, zmq.ZMQError):
                await asyncio.sleep(0.05)


@pytest.mark.timeout(30)
@pytest.mark.asyncio
class TransportConformance:
    client_reports_disconnects = True
    #: Whether this transport's connected endpoints reconnect (``Connection.reconnects``);
    #: ``ReconnectingTransportConformance`` declares it and adds the tests that need it.
    client_reconnects = False

    @pytest.fixture(autouse=True)
    def _reset_seen(self) -> None:
        self.seen: set[bytes] = set()

    def transport(self) -> Transport:
        raise NotImplementedError

    def bind_address(self) -> Any:
        raise NotImplementedError

    def connect_address(self, server: Connection) -> Any:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def pair(self, clients: int = 1) -> AsyncIterator[tuple[Connection, list[Connection]]]:
        transport = self.transport()
        server = await transport.bind(self.bind_address(), max_frame_size=MAX_FRAME)
        conns: list[Connection] = []
        try:
            for _ in range(clients):
                conns.append(
                    await transport.connect(self.connect_address(server), max_frame_size=MAX_FRAME)
                )
            yield server, conns
        finally:
            for conn in conns:
                await conn.aclose()
            await server.aclose()

    async def hello(self, server: Connection, client: Connection) -> bytes:
        """Make ``client`` known to ``server``; return its key on the server.

        Checks that the server saw ``Connected`` for the key before its first ``Received``.
        """
        await client.send([b"hello"])
        while True:
            event = await next_event(server)
            if isinstance(event, Connected):
                self.seen.add(event.peer)
            elif isinstance(event, Received):
                assert event.peer in self.seen
                assert event.frames == [b"hello"]
                return event.peer

    async def test_connected_precedes_received(self) -> None:
        async with self.pair() as (server, [client]):
            assert server.bound
            assert not client.bound
            await self.hello(server, client)

    async def test_reply_reaches_the_client(self) -> None:
        async with self.pair() as (server, [client]):
            key = await self.hello(server, client)
            assert isinstance(await next_event(client), Connected)
            await server.send([b"a", b"b"], to=key)
            received = await next_event(client, Received)
            assert received.frames == [b"a", b"b"]
            assert received.peer == CONNECTED_KEY  # a connected endpoint's one remote

    async def test_many_clients_have_distinct_keys_and_get_their_own_replies(self) -> None:
        async with self.pair(clients=3) as (server, clients):
            keys = [await self.hello(server, c) for c in clients]
            assert len(set(keys)) == 3
            for i, key in enumerate(keys):
                await server.send([str(i).encode()], to=key)
            for i, client in enumerate(clients):
                received = await next_event(client, Received)
                assert received.frames == [str(i).encode()]

    @pytest.mark.parametrize(
        "frames",
        [[b""], [b"\x00" * 7, b""], [b"x", b"y", b"z"], [bytes(range(256)) * 3]],
    )
    async def test_frames_arrive_as_sent(self, frames: list[bytes]) -> None:
        async with self.pair() as (server, [client]):
            await self.hello(server, client)
            await client.send(frames)
            assert (await next_event(server, Received)).frames == frames

    async def test_large_frames_round_trip(self) -> None:
        big = bytes(range(256)) * (8 * 2**20 // 256)
        async with self.pair() as (server, [client]):
            key = await self.hello(server, client)
            await client.send([b"h", big])
            assert (await next_event(server, Received)).frames == [b"h", big]
            await server.send([big], to=key)
            assert (await next_event(client, Received)).frames == [big]

    async def test_order_is_preserved(self) -> None:
        async with self.pair() as (server, [client]):
            await self.hello(server, client)
            for i in range(500):
                await client.send([i.to_bytes(4, "big")])
            got = [
                int.from_bytes((await next_event(server, Received)).frames[0], "big")
                for _ in range(500)
            ]
            assert got == list(range(500))

    async def test_a_receiver_that_falls_behind_loses_nothing(self) -> None:
        """More than the receive queue holds, sent while nobody receives, all arrives in order.

        The full queue pauses reading (TCP: the socket's buffers then push back on the
        sender); taking events out must resume it.
        """
        count, body = 4 * RECEIVE_QUEUE_SIZE, b"p" * 2048
        async with self.pair() as (server, [client]):
            await self.hello(server, client)

            async def flood() -> None:
                for i in range(count):  # by ``post``, half of them: its waits hold too
                    frames = [i.to_bytes(4, "big"), body]
                    await (client.send(frames) if i % 2 else post(client, frames))

            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(flood())
                await asyncio.sleep(0.3)  # the queue fills up and reading stops
                for i in range(count):
                    frames = (await next_event(server, Received)).frames
                    assert frames == [i.to_bytes(4, "big"), body]

    async def test_send_to_an_unknown_key_raises(self) -> None:
        async with self.pair() as (server, [_client]):
            with pytest.raises(PeerDisconnectedError):
                await server.send([b"x"], to=b"nobody")

    async def test_disconnect_forgets_the_key(self) -> None:
        async with self.pair() as (server, [client]):
            key = await self.hello(server, client)
            await server.disconnect(key)
            await server.disconnect(key)  # unknown keys are ignored
            with pytest.raises(PeerDisconnectedError):
                await server.send([b"x"], to=key)

    async def test_closed_connection_refuses_everything(self) -> None:
        async with self.pair() as (_server, [client]):
            await client.aclose()
            await client.aclose()  # idempotent
            with pytest.raises(PeerClosedError):
                await client.send([b"x"])
            with pytest.raises(PeerClosedError):
                await client.receive()

    async def test_aclose_wakes_a_pending_receive(self) -> None:
        async with self.pair(clients=0) as (server, _):
            waiter = asyncio.create_task(server.receive())
            await asyncio.sleep(0.05)
            await server.aclose()
            with pytest.raises(PeerClosedError):
                await asyncio.wait_for(waiter, WAIT)

    async def test_cancelled_receive_loses_nothing(self) -> None:
        async with self.pair() as (server, [client]):
            await self.hello(server, client)
            waiter = asyncio.create_task(server.receive())
            await asyncio.sleep(0.05)
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            await client.send([b"after"])
            assert (await next_event(server, Received)).frames == [b"after"]

    async def test_client_going_away_is_reported_when_supported(self) -> None:
        async with self.pair() as (server, [client]):
            key = await self.hello(server, client)
            await client.aclose()
            if server.reports_disconnects:
                gone = await next_event(server, Disconnected)
                assert gone.peer == key
            else:
                assert await nothing_arrives(server)

    async def test_server_going_away_is_reported_to_the_client(self) -> None:
        async with self.pair() as (server, [client]):
            await self.hello(server, client)
            assert isinstance(await next_event(client), Connected)
            await server.aclose()
            if self.client_reports_disconnects:
                assert isinstance(await next_event(client, Disconnected), Disconnected)
            else:
                assert await nothing_arrives(client)

    async def test_a_servers_last_messages_arrive_before_it_is_reported_gone(self) -> None:
        """What a server sent before it closed reaches the client before ``Disconnected``.

        A Peer's last words are its Cancelled replies and its Goodbye; a transport that
        reports the drop first, or drops what was not read yet, loses them. Tried several
        times, as the order is a race.
        """
        for _ in range(10):
            async with self.pair() as (server, [client]):
                key = await self.hello(server, client)
                assert isinstance(await next_event(client), Connected)
                for n in range(20):  # small ones, batched; and large ones, on their own
                    await server.send([b"last", str(n).encode(), bytes(n % 2 * 200_000)], to=key)
                await server.aclose()
                got: list[int] = []
                while len(got) < 20:
                    event = await next_event(client)
                    assert not isinstance(event, Disconnected), f"gone after only {got}"
                    if isinstance(event, Received):
                        got.append(int(event.frames[1]))
                assert got == list(range(20))
                if self.client_reports_disconnects:
                    assert isinstance(await next_event(client), Disconnected)

    async def test_reconnect_capability_is_the_declared_one(self) -> None:
        """The connection's ``reconnects`` decides which suite a transport belongs to."""
        async with self.pair() as (_server, [client]):
            assert client.reconnects is self.client_reconnects

    @contextlib.asynccontextmanager
    async def limited(self) -> AsyncIterator[tuple[Connection, Connection, Connection]]:
        """A server with a 1 KiB ``max_frame_size``, and a bad and a good client of it."""
        transport = self.transport()
        server = await transport.bind(self.bind_address(), max_frame_size=1024)
        try:
            bad = await transport.connect(self.connect_address(server), max_frame_size=1 << 20)
            good = await transport.connect(self.connect_address(server), max_frame_size=1 << 20)
            try:
                yield server, bad, good
            finally:
                await bad.aclose()
                await good.aclose()
        finally:
            await server.aclose()

    async def test_oversize_frame_is_not_delivered(self) -> None:
        async with self.limited() as (server, bad, good):
            await bad.send([b"y" * 4096])
            await good.send([b"fine"])
            while True:
                event = await next_event(server)
                if isinstance(event, Received):
                    break
            assert event.frames == [b"fine"]

    # -- batching: what one loop iteration sends --------------------------------------------

    @staticmethod
    def mixed_messages(count: int) -> list[list[bytes]]:
        """Small messages, with an empty first frame now and then and a few large ones."""
        big = bytes(range(256)) * 1024  # 256 KiB: always sent on its own
        out: list[list[bytes]] = []
        for i in range(count):
            tag = i.to_bytes(4, "big")
            if i % 97 == 50:
                out.append([tag, big])
            elif i % 31 == 7:
                out.append([b"", tag])
            else:
                out.append([tag, b"x" * (i % 200)])
        return out

    @staticmethod
    async def send_in_one_iteration(send: Any, messages: list[list[bytes]]) -> None:
        ticked: list[bool] = []
        asyncio.get_running_loop().call_soon(ticked.append, True)
        for frames in messages:
            await send(frames)
        assert not ticked, "the sends were meant to happen within one loop iteration"

    async def test_messages_of_one_iteration_arrive_complete_and_in_order(self) -> None:
        sent = self.mixed_messages(400)
        async with self.pair() as (server, [client]):
            key = await self.hello(server, client)
            assert isinstance(await next_event(client), Connected)
            await self.send_in_one_iteration(client.send, sent)
            assert [(await next_event(server, Received)).frames for _ in sent] == sent
            await self.send_in_one_iteration(functools.partial(server.send, to=key), sent)
            assert [(await next_event(client, Received)).frames for _ in sent] == sent
            assert await nothing_arrives(server, within=0.1)

    async def test_posted_messages_arrive_as_sent_ones_do(self) -> None:
        """``post`` is ``send`` without a coroutine where it can be: the same messages arrive."""
        sent = self.mixed_messages(400)
        async with self.pair() as (server, [client]):
            key = await self.hello(server, client)
            assert isinstance(await next_event(client), Connected)
            await self.send_in_one_iteration(functools.partial(post, client), sent)
            assert [(await next_event(server, Received)).frames for _ in sent] == sent
            await self.send_in_one_iteration(functools.partial(post, server, to=key), sent)
            assert [(await next_event(client, Received)).frames for _ in sent] == sent

    async def test_post_raises_what_send_raises(self) -> None:
        async with self.pair() as (server, [client]):
            key = await self.hello(server, client)
            with pytest.raises(PeerDisconnectedError):
                await post(server, [b"x"], to=b"nobody")
            await server.disconnect(key)
            with pytest.raises(PeerDisconnectedError):
                await post(server, [b"x"], to=key)
            await client.aclose()
            with pytest.raises(PeerClosedError):
                await post(client, [b"x"])

    async def test_iterations_of_many_messages_to_many_remotes_keep_each_order(self) -> None:
        async with self.pair(clients=3) as (server, clients):
            keys = [await self.hello(server, c) for c in clients]
            for round_ in range(5):
                ticked: list[bool] = []
                asyncio.get_running_loop().call_soon(ticked.append, True)
                for i in range(40):
                    for n, key in enumerate(keys):
                        await server.send([bytes([n, round_, i])], to=key)
                assert not ticked
                await asyncio.sleep(0)
            for n, client in enumerate(clients):
                got = [(await next_event(client, Received)).frames for _ in range(200)]
                assert got == [[bytes([n, r, i])] for r in range(5) for i in range(40)]

    async def test_a_lone_message_is_delivered_without_waiting_for_another(self) -> None:
        async with self.pair() as (server, [client]):
            key = await self.hello(server, client)
            assert isinstance(await next_event(client), Connected)
            for i in range(20):  # a ping-pong: each side has exactly one message to send
                await client.send([b"ping", bytes([i])])
                assert (await next_event(server, Received)).frames == [b"ping", bytes([i])]
                await server.send([b"pong", bytes([i])], to=key)
                assert (await next_event(client, Received)).frames == [b"pong", bytes([i])]

    async def test_max_frame_size_holds_for_each_message_of_an_iteration(self) -> None:
        async with self.limited() as (server, bad, good):
            await self.send_in_one_iteration(bad.send, [[b"a"], [b"y" * 4096], [b"b"]])
            fine = [[b"fine", bytes([i])] for i in range(50)]
            await self.send_in_one_iteration(good.send, fine)
            got: list[list[bytes]] = []
            while len(got) < len(fine):
                event = await next_event(server, Received)
                assert all(len(f) <= 1024 for f in event.frames)
                if event.frames[0] == b"fine":
                    got.append(event.frames)
            assert got == fine
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    while True:  # whatever else comes, the oversize frame does not
                        event = await server.receive()
                        if isinstance(event, Received):
                            assert all(len(f) <= 1024 for f in event.frames)


class ReconnectingTransportConformance(TransportConformance):
    """The conformance suite, and the tests of a connected endpoint's reconnection."""

    client_reconnects = True

    @staticmethod
    def require_reconnects(client: Connection) -> None:
        # A guard only: the subclass declared the capability, and
        # ``test_reconnect_capability_is_the_declared_one`` fails when the connection lacks it.
        if not client.reconnects:
            pytest.skip("this connection does not reconnect (Connection.reconnects is False)")

    async def test_client_reconnects_to_a_restarted_server(self) -> None:
        transport = self.transport()
        async with self.pair() as (server, [client]):
            self.require_reconnects(client)
            await self.hello(server, client)
            assert isinstance(await next_event(client), Connected)
            address = self.connect_address(server)
            await server.aclose()
            assert isinstance(await next_event(client, Disconnected), Disconnected)
            again = await rebind(transport, address)
            try:
                assert isinstance(await next_event(client, Connected), Connected)
                await client.send([b"back"])
                event = await next_event(again, Received)
                assert event.frames == [b"back"]
                await again.send([b"welcome back"], to=event.peer)
                assert (await next_event(client, Received)).frames == [b"welcome back"]
            finally:
                await again.aclose()

    async def test_disconnect_makes_a_reconnecting_client_connect_anew(self) -> None:
        async with self.pair() as (server, [client]):
            self.require_reconnects(client)
            first = await self.hello(server, client)
            assert isinstance(await next_event(client), Connected)
            await client.disconnect(CONNECTED_KEY)
            event = await next_event(client)
            assert isinstance(event, Connected)  # and no Disconnected: we dropped it ourselves
            second = await self.hello(server, client)
            assert second != first
            await server.send([b"new"], to=second)
            assert (await next_event(client, Received)).frames == [b"new"]
