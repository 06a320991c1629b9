"""The delay forwarder: each round trip takes twice the delay, in order, with bounded buffers.

Needs root (skipped otherwise, with the reason). The bed's contract (docs/netbed.md): a
chunk or datagram is never released before its arrival plus the delay, so a round trip takes
at least twice the delay; the forwarder adds little on top, and the tests allow
``MARGIN_MS`` for it and for a loaded machine.
"""

from __future__ import annotations

import json
import time

import pytest

from callosum_like.tools.netbed.bed import NetBed
from callosum_like.tools.netbed.commands import NetBedError

from .conftest import median, needs_bed, probe

pytestmark = [needs_bed, pytest.mark.timeout(60)]

#: One-way delay tried, in milliseconds.
DELAY_MS = 40.0
#: What the forwarder and a busy machine may add to a round trip (the bed's stated margin).
MARGIN_MS = 60.0
#: The forwarder's buffer per direction in the buffer test, and the bytes streamed through it.
BUFFER = 256 * 1024
STREAM_BYTES = 2_000_000


@pytest.mark.asyncio
@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_each_round_trip_takes_twice_the_delay(bed: NetBed, echo: int, proto: str) -> None:
    args = ("rtt", "--proto", proto, "--count", "10", "--to", f"{bed.address('b')}:{echo}")
    assert median((await probe(bed, "a", *args))["rtts_ms"]) < MARGIN_MS  # fast before
    await bed.delay(DELAY_MS)
    result = await probe(bed, "a", *args)
    assert result["lost"] == 0
    assert min(result["rtts_ms"]) >= 2 * DELAY_MS - 1  # never released early (1 ms: rounding)
    assert median(result["rtts_ms"]) <= 2 * DELAY_MS + MARGIN_MS, result["rtts_ms"]
    assert result["peer"].split(":")[0] == bed.address("a")  # b still sees its real caller
    stats = await bed.forwarder_statistics()
    assert stats["tcp_connections" if proto == "tcp" else "udp_flows"] == 1  # it went through


@pytest.mark.asyncio
async def test_a_new_delay_applies_to_what_arrives_after_it_on_an_open_connection(
    bed: NetBed, echo: int
) -> None:
    await bed.delay(0)  # the forwarder is in the path, holding nothing yet
    to = f"{bed.address('b')}:{echo}"
    args = ("-m", "callosum_like.tools.netbed.probe", "ticker", "--count", "60", "--to", to)
    async with bed.spawn("a", "ticker", *args, relay=False) as ticker:
        await ticker.ready()
        await bed.delay(DELAY_MS)
        changed_at = time.monotonic()
        assert await ticker.wait(30) == 0, ticker.tail()
    assert ticker.result is not None
    ticks = json.loads(ticker.result)["ticks"]
    assert [tick[0] for tick in ticks] == list(range(60))
    rtts = [(sent, (received - sent) * 1000) for _, sent, received in ticks]
    assert rtts[0][1] < DELAY_MS  # the first one, before the change, was not held
    later = [rtt for sent, rtt in rtts if sent > changed_at]
    assert len(later) > 10
    assert min(later) >= 2 * DELAY_MS - 1
    stats = await bed.forwarder_statistics()
    assert stats["tcp_connections"] == 1  # the same connection throughout


@pytest.mark.asyncio
@pytest.mark.parametrize("bed", [{"forwarder_buffer_size": BUFFER}], indirect=True)
async def test_tcp_through_the_forwarder_arrives_whole_in_order_with_bounded_buffers(
    bed: NetBed, echo: int
) -> None:
    await bed.delay(DELAY_MS)
    args = ("stream", "--size", str(STREAM_BYTES), "--to", f"{bed.address('b')}:{echo}")
    result = await probe(bed, "a", *args)
    stats = await bed.forwarder_statistics()
    assert result["intact"]  # every byte back, in order
    # The sender had far more to send than the forwarder may hold: it held up to its bound
    # (so the bound was reached) and never more (so the rest waited in the sender: back-pressure).
    assert BUFFER // 2 <= stats["peak_buffered"] <= BUFFER, stats
    # A window of BUFFER per delay: the stream cannot be faster than that, twice over.
    assert result["seconds"] >= 2 * DELAY_MS / 1000


@pytest.mark.asyncio
async def test_statistics_need_a_forwarder_and_a_negative_delay_is_refused(bed: NetBed) -> None:
    with pytest.raises(NetBedError, match="no forwarder"):
        await bed.forwarder_statistics()
    with pytest.raises(ValueError, match="delay"):
        await bed.delay(-1)
