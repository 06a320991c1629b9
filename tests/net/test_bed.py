"""The bed itself: hosts reach each other through the router and nothing else; it always goes.

Needs root (skipped otherwise, with the reason). Every test checks, through its fixture, that
nothing of its bed is left afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from callosum_like.tools.netbed.bed import NetBed
from callosum_like.tools.netbed.commands import namespaces, sweep_stale

from .conftest import leftovers, needs_bed, probe

pytestmark = [needs_bed, pytest.mark.timeout(60)]

#: A process that makes a bed, says where, and waits to be killed.
ORPHAN = """
import asyncio
from callosum_like.tools.netbed.bed import NetBed
async def main():
    async with NetBed(("x", "y")) as bed:
        print(bed.name.stem, flush=True)
        await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_hosts_reach_each_other_through_the_router_and_nothing_beyond(
    bed: NetBed, echo: int
) -> None:
    there = await probe(bed, "a", "rtt", "--proto", "tcp", "--to", f"{bed.address('b')}:{echo}")
    assert there["peer"].split(":")[0] == bed.address("a")  # no address translation on the way
    assert len(there["rtts_ms"]) == 20
    # The router knows only the hosts' subnets: anything else is unreachable, at once.
    outside = await probe(
        bed, "a", "rtt", "--proto", "tcp", "--to", "192.0.2.1:9", "--connect-timeout", "10",
        check=False,
    )  # fmt: skip
    assert outside["errno"] in ("ENETUNREACH", "EHOSTUNREACH"), outside


async def inside(pid: int, namespace: str) -> None:
    """Wait until process ``pid`` has entered network namespace ``namespace``."""
    wanted = os.stat(f"/run/netns/{namespace}").st_ino
    async with asyncio.timeout(10):
        while os.stat(f"/proc/{pid}/ns/net").st_ino != wanted:
            await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_leaving_the_bed_kills_what_runs_in_it_even_when_the_block_failed() -> None:
    bed = NetBed()
    sleeper = None
    try:
        with pytest.raises(RuntimeError, match="the test's own failure"):
            async with bed:
                sleeper = subprocess.Popen(bed.argv("b", "sleep", "600"))
                await inside(sleeper.pid, bed.namespace("b"))  # it runs in the bed, unmanaged
                raise RuntimeError("the test's own failure")
        assert await leftovers(bed) == []
        assert sleeper is not None
        assert await asyncio.to_thread(sleeper.wait, 10) == -signal.SIGKILL
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


@pytest.mark.asyncio
async def test_a_bed_whose_owner_was_killed_is_swept_and_others_are_left(
    bed: NetBed, echo: int
) -> None:
    orphan = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ORPHAN, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    assert orphan.stdout is not None
    async with asyncio.timeout(30):
        stem = (await orphan.stdout.readline()).decode().strip()
    assert stem.startswith("clnb-"), stem
    orphan.kill()
    assert await orphan.wait() == -signal.SIGKILL
    left = sorted(name for name in await namespaces() if name.startswith(f"{stem}-"))
    assert left == [f"{stem}-router", f"{stem}-x", f"{stem}-y"]  # killed: nothing cleaned up

    assert sorted(await sweep_stale()) == left
    assert [name for name in await namespaces() if name.startswith(stem)] == []
    # Our own bed (same addresses, another namespace set) was left alone and still works.
    assert len(await leftovers(bed)) == 3
    await probe(
        bed, "a", "rtt", "--proto", "udp", "--count", "3", "--to", f"{bed.address('b')}:{echo}"
    )
