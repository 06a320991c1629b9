"""Each knob of the bed has its effect, measured with real traffic across the router.

Needs root (skipped otherwise, with the reason). The bands are wide on purpose: they are
several standard deviations of the sampling (loss) or a factor of the configured rate
(bandwidth), so a loaded machine does not fail them, while a knob that did nothing would.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from callosum_like.tools.netbed.bed import NetBed

from .conftest import needs_bed, probe

pytestmark = [needs_bed, pytest.mark.timeout(60)]

#: UDP datagrams per loss measurement: at 20 % the standard deviation of the observed share
#: is 1.3 points (1.4 for the share of the survivors that comes back).
DATAGRAMS = 1000
#: The bandwidth cap tried, in bit/s (1 MB/s), and the bytes streamed through it.
RATE = 8_000_000
STREAM_BYTES = 1_000_000
#: Seconds a link stays down in the flap test, and how late after it went down an echo that
#: was already on its way may still be read (the reading process may be scheduled late).
DOWN_TIME = 1.5
IN_FLIGHT_GRACE = 0.3


async def delivered(bed: NetBed, port: int) -> tuple[float, float]:
    """Of ``DATAGRAMS`` UDP datagrams from ``a``: the share that reached ``b``, and of those
    the share that ``b``'s echo brought back."""
    to = f"{bed.address('b')}:{port}"
    result = await probe(bed, "a", "loss", "--count", str(DATAGRAMS), "--to", to)
    assert result["sent"] == DATAGRAMS
    return result["arrived"] / DATAGRAMS, result["received"] / max(result["arrived"], 1)


def within(share: float, expected: float) -> bool:
    """``share`` is ``expected`` give or take 6 points (over 4 standard deviations)."""
    return expected - 0.06 <= share <= expected + 0.06


@pytest.mark.asyncio
async def test_loss_drops_that_share_of_datagrams_in_each_direction_chosen(
    bed: NetBed, echo: int
) -> None:
    assert await delivered(bed, echo) == (1.0, 1.0)  # clean first: every loss below is the knob's
    await bed.loss("b", 20, direction="in")  # only on the way to b
    there, back = await delivered(bed, echo)
    assert within(there, 0.8), there
    assert back == 1.0
    await bed.loss("b", 0)
    await bed.loss("b", 20, direction="out")  # only on the way from b
    there, back = await delivered(bed, echo)
    assert there == 1.0
    assert within(back, 0.8), back
    await bed.loss("b", 20)  # both ways
    there, back = await delivered(bed, echo)
    assert within(there, 0.8), there
    assert within(back, 0.8), back
    await bed.loss("b", 0)
    assert await delivered(bed, echo) == (1.0, 1.0)


@pytest.mark.asyncio
async def test_bandwidth_caps_throughput_and_lifting_it_restores_it(bed: NetBed, echo: int) -> None:
    to = f"{bed.address('b')}:{echo}"

    async def throughput() -> float:
        result = await probe(bed, "a", "stream", "--size", str(STREAM_BYTES), "--to", to)
        assert result["intact"]
        return float(result["bytes"]) * 8 / float(result["seconds"])

    assert await throughput() > 10 * RATE  # uncapped, the veths are far faster than the cap
    await bed.bandwidth("a", RATE)
    capped = await throughput()
    assert 0.4 * RATE <= capped <= 1.25 * RATE, f"{capped / 1e6:.2f} Mbit/s"
    await bed.bandwidth("a", None)
    assert await throughput() > 10 * RATE


@pytest.mark.asyncio
async def test_down_stalls_an_open_connection_and_up_resumes_the_same_one(
    bed: NetBed, echo: int
) -> None:
    to = f"{bed.address('b')}:{echo}"
    args = ("-m", "callosum_like.tools.netbed.probe", "ticker", "--count", "150", "--to", to)
    async with bed.spawn("a", "ticker", *args, relay=False) as ticker:
        await ticker.ready()  # the first echo is back: the connection is open and flowing
        await bed.down("b")
        down_at = time.monotonic()
        await asyncio.sleep(DOWN_TIME)  # the outage itself, not a wait for a result
        up_at = time.monotonic()
        await bed.up("b")
        assert await ticker.wait(30) == 0, ticker.tail()
    assert ticker.result is not None
    ticks = json.loads(ticker.result)["ticks"]
    assert [tick[0] for tick in ticks] == list(range(150))  # one connection, nothing lost
    arrivals = [tick[2] for tick in ticks]
    # Echoes already on their way may land just after the link went down; none after that.
    assert not [t for t in arrivals if down_at + IN_FLIGHT_GRACE < t < up_at], (down_at, up_at)
    assert arrivals[-1] > up_at  # and the rest came after it was back up
    assert sum(tick[1] < up_at for tick in ticks) > sum(t < up_at for t in arrivals)


@pytest.mark.asyncio
async def test_readdress_moves_a_host_and_its_old_address_is_gone(bed: NetBed, echo: int) -> None:
    old_b, old_a = bed.address("b"), bed.address("a")
    before = await probe(
        bed, "a", "rtt", "--proto", "tcp", "--count", "1", "--to", f"{old_b}:{echo}"
    )
    assert before["peer"].split(":")[0] == old_a

    new_b = await bed.readdress("b")
    assert new_b != old_b
    assert bed.address("b") == new_b
    await probe(bed, "a", "rtt", "--proto", "tcp", "--count", "1", "--to", f"{new_b}:{echo}")
    gone = await probe(
        bed, "a", "rtt", "--proto", "tcp", "--to", f"{old_b}:{echo}", "--connect-timeout", "1",
        check=False,
    )  # fmt: skip
    assert "error" in gone

    new_a = await bed.readdress("a")  # the caller moves: the server sees it come from there
    after = await probe(
        bed, "a", "rtt", "--proto", "tcp", "--count", "1", "--to", f"{new_b}:{echo}"
    )
    assert after["peer"].split(":")[0] == new_a != old_a
