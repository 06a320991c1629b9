"""Hostile input against live peers on both transports, and the codec fuzz target.

A hostile raw client completes the handshake, then hypothesis feeds it batches of garbage
frames, truncated and wrong-version messages, valid messages in the wrong state or order,
and oversized bodies. After each batch it sends a probe call: its answer proves the server
read the whole batch (one connection keeps order). Then:

* every message the server dropped was counted and logged exactly once (the count of
  ``dropped a message`` records equals the growth of ``dropped_messages``);
* nothing escaped the receive loop (no ERROR record);
* a well-behaved client is still served.

Frames beyond the transport's limits and raw garbage bytes (below the framing) cost the
sender its connection, and only that.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import callosum_like as cl
from callosum_like.errors import ProtocolError
from callosum_like.lower.base import Received
from callosum_like.wire import messages as m
from callosum_like.wire.codec import decode, encode, pack_body
from callosum_like.wire.framing import encode_message

from .conftest import SOCKET_TRANSPORTS, bind_address, connect_address
from .rawpeer import MAX, RawClient

pytestmark = pytest.mark.timeout(60)
#: The server's body limit: small, so that oversize bodies are cheap to make.
MAX_BODY = 4096
#: Probe call ids live far above the ids the strategies draw, so they never collide.
PROBE_BASE = 1 << 40

IDS = st.integers(min_value=0, max_value=1000)
TEXT = st.text(max_size=12)
#: Every message kind but Goodbye (which ends the link on purpose), in any state's order.
VALID = st.one_of(
    st.builds(m.Hello, identity=TEXT, max_body_size=st.integers(-5, MAX)),
    st.builds(m.Welcome, identity=TEXT, assigned=TEXT, max_body_size=st.integers(0, MAX)),
    st.builds(
        m.Call, id=IDS, method=st.sampled_from(["echo", "nothing", ""]), body=st.just(b"\xc0")
    ),
    st.builds(m.Result, id=IDS, body=st.just(b"\x01")),
    st.builds(m.Failure, id=IDS, name=TEXT, repr=TEXT, traceback=TEXT),
    st.builds(m.Error, id=IDS, code=st.integers(0, 9), message=TEXT),
    st.builds(m.Cancel, id=IDS),
    st.builds(m.Cancelled, id=IDS, reason=TEXT),
    st.just(m.Ping()),
    st.just(m.Pong()),
    st.builds(m.StreamItem, id=IDS, body=st.just(b"\x02")),
    st.builds(m.StreamEnd, id=IDS),
    st.builds(m.Credit, id=IDS, amount=st.integers(-3, 1 << 30)),
)


@st.composite
def hostile_frames(draw: st.DrawFn) -> list[bytes]:
    """One hostile transport message: a list of frames."""
    kind = draw(st.sampled_from(["garbage", "truncated", "version", "valid", "oversize"]))
    if kind == "garbage":
        return draw(st.lists(st.binary(max_size=40), min_size=1, max_size=3))
    if kind == "oversize":
        body = b"\xc4" + b"x" * (MAX_BODY + draw(st.integers(1, 64)))
        return encode(m.Call(id=draw(IDS), method="echo", body=body))
    frames = encode(draw(VALID))
    if kind == "truncated":
        cut = draw(st.integers(0, max(0, len(frames[0]) - 1)))
        return [frames[0][:cut], *frames[1:]]
    if kind == "version":
        head = msgpack.unpackb(frames[0])
        head[0] = draw(st.integers(-1, 300).filter(lambda v: v != m.PROTOCOL_VERSION) | TEXT)
        return [msgpack.packb(head), *frames[1:]]
    return frames


class Arena:
    """One server, one well-behaved client and one hostile raw client, for many examples."""

    def __init__(self, kind: str, server: cl.Peer, good: cl.Peer, raw: RawClient) -> None:
        self.kind, self.server, self.good, self.raw = kind, server, good, raw
        self.probes = 0

    async def probe(self) -> None:
        """Call echo from the raw client and wait for its answer (skipping the others)."""
        self.probes += 1
        call_id = PROBE_BASE + self.probes
        await self.raw.send(m.Call(id=call_id, method="echo", body=pack_body(call_id)))
        async with asyncio.timeout(10):
            while True:
                event = await self.raw.conn.receive()
                if not isinstance(event, Received):
                    continue
                reply = decode(event.frames, max_body_size=MAX)
                if isinstance(reply, m.Result) and reply.id == call_id:
                    return


@contextlib.asynccontextmanager
async def arena(kind: str, **server_options: Any) -> AsyncIterator[Arena]:
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            cl.Peer(
                bind=bind_address(kind), identity="server", max_body_size=MAX_BODY, **server_options
            )
        )
        server.handle_function("echo", echo)
        good = await stack.enter_async_context(
            cl.Peer(connect=connect_address(server), identity="good")
        )
        raw = await RawClient.connect(server, kind)
        stack.push_async_callback(raw.aclose)
        await raw.handshake("hostile")
        yield Arena(kind, server, good, raw)


async def echo(request: cl.Request) -> Any:
    return request.body


def drop_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("dropped a message")]


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


def test_a_live_peer_survives_hostile_messages(
    transport_kind: str, runner: asyncio.Runner, caplog: pytest.LogCaptureFixture
) -> None:
    for logger in ("callosum_like.peer", "callosum_like.lower"):  # drops past the WARNING
        caplog.set_level(logging.DEBUG, logger=logger)  # budget go to DEBUG
    context = arena(transport_kind)  # held: a dropped one would be finalized, and close all
    place = runner.run(context.__aenter__())

    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(batch=st.lists(hostile_frames(), min_size=1, max_size=8))
    def feed(batch: list[list[bytes]]) -> None:
        async def one_batch() -> None:
            caplog.clear()
            before = place.server.statistics().dropped_messages
            for frames in batch:
                await place.raw.send_frames(frames)
            await place.probe()
            dropped = place.server.statistics().dropped_messages - before
            assert len(drop_records(caplog)) == dropped
            assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

        runner.run(one_batch())

    try:
        feed()
        assert place.server.statistics().dropped_messages > 0
        assert runner.run(place.good.invoke("echo", "still served")) == "still served"
        assert place.server.peers == {"good", "hostile"}
    finally:
        runner.run(context.__aexit__(None, None, None))


@pytest.mark.asyncio
async def test_a_frame_over_the_transport_limit_costs_the_sender_its_connection(
    transport_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    # libzmq drops such a connection without telling us: the heartbeat notices.
    async with arena(transport_kind, heartbeat_interval=0.1, heartbeat_timeout=1.0) as place:
        await place.raw.send_frames([b"h" * (MAX_BODY + (1 << 20) + 1)])
        async with asyncio.timeout(10):
            while "hostile" in place.server.peers:
                await asyncio.sleep(0.05)
        assert await place.good.invoke("echo", 1) == 1
        if transport_kind == "tcp":
            assert place.server.statistics().dropped_messages == 1
            assert len(drop_records(caplog)) == 1


@pytest.mark.transports(*SOCKET_TRANSPORTS)  # raw bytes on a socket of ours
@pytest.mark.asyncio
@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00",  # a message of no frames
        b"\xff\xff" + b"\x00" * 8,  # too many frames
        b"\x00\x01\xff\xff\xff\xff",  # a frame of 4 GiB
        bytes(range(256)) * 4,
        b"\x00\x01\x00\x00\x00\x10abc",  # truncated, then the connection ends
    ],
)
async def test_raw_garbage_bytes_cost_only_that_connection(
    transport_kind: str, garbage: bytes
) -> None:
    async with arena(transport_kind) as place:
        host, port = place.server.address.removeprefix("tcp://").rsplit(":", 1)
        for _ in range(3):
            if transport_kind == "quic":  # the same bytes as datagrams
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.sendto(garbage, (host, int(port)))
                continue
            with socket.create_connection((host, int(port))) as sock:
                sock.sendall(garbage)
        assert await place.good.invoke("echo", "fine") == "fine"
        await place.probe()
        if transport_kind in ("tcp", "quic"):
            async with asyncio.timeout(10):
                while place.server.statistics().dropped_messages < 3:
                    await asyncio.sleep(0.02)


def load_fuzz_target() -> Any:
    path = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_codec.py"
    spec = importlib.util.spec_from_file_location("fuzz_codec", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_codec_fuzz_target_runs_without_atheris(capsys: pytest.CaptureFixture[str]) -> None:
    target = load_fuzz_target()
    seed = random.randrange(1 << 30)
    reproduce = f"seed {seed}: reproduce with python fuzz/fuzz_codec.py --random 3000 --seed {seed}"
    print(reproduce)  # shown with the captured output of a failure
    outcomes: Counter[str] = Counter()

    def checked(data: bytes) -> None:
        target.test_one_input(data)  # every property, on this input
        try:
            decode(target.split_frames(data), max_body_size=target.MAX_BODY)
        except ProtocolError:
            outcomes["refused"] += 1
        else:
            outcomes["decoded"] += 1

    try:
        ran = target.run_random(3000, seed=seed, target=checked)
    except Exception as exc:
        exc.add_note(reproduce)
        raise
    # Every input went through the properties, and the inputs reached both sides of the
    # decoder: a codec that refused everything would pass the properties vacuously.
    assert ran == outcomes.total() == 3000 + len(target.seed_inputs()), reproduce
    assert outcomes["decoded"] > 0, (outcomes, reproduce)
    assert outcomes["refused"] > 0, (outcomes, reproduce)
    capsys.readouterr()
    assert target.main(["fuzz_codec.py", "--random", "50", "--seed", str(seed)]) == 0, reproduce
    out = capsys.readouterr().out
    assert out == f"{50 + len(target.seed_inputs())} inputs, no property violated\n", reproduce


def test_the_codec_fuzz_target_catches_a_broken_property() -> None:
    target = load_fuzz_target()

    def broken(data: bytes) -> None:
        target.test_one_input(data)
        if data[:1] == b"\x00":
            raise AssertionError("found it")

    with pytest.raises(AssertionError, match="found it"):
        target.run_random(1000, target=broken)
    assert encode_message([b"x"])  # the target's imports are the package's
