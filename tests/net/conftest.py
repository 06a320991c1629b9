"""Fixtures of the network fault test bed's tests: a bed that always goes, an echo server.

A bed needs root, ``ip``, ``tc`` and ``nft``; where it cannot be built, every test that
asks for one is skipped and the skip says why (``make install`` installs the tools as root,
and CI runs as root, so there nothing is skipped). Every bed is removed after its test,
even when the test failed, and the test fails if anything of it is left.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from callosum_like.tools.netbed.bed import NetBed
from callosum_like.tools.netbed.commands import (
    NetBedUnavailableError,
    namespaces,
    unavailable_reason,
)

PROBE = "callosum_like.tools.netbed.probe"
#: Seconds any one probe client may run.
PROBE_TIMEOUT = 30.0

#: Why no bed can be built here (``None``: nothing known against it).
UNAVAILABLE = unavailable_reason()
needs_bed = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))


async def open_bed(**options: Any) -> NetBed:
    """An entered ``NetBed``, or a skip of the test when beds cannot be made here."""
    bed = NetBed(**options)
    try:
        return await bed.__aenter__()
    except NetBedUnavailableError as exc:
        pytest.skip(str(exc))


async def leftovers(bed: NetBed) -> list[str]:
    """The namespaces of ``bed`` that still exist."""
    return [name for name in await namespaces() if name.startswith(f"{bed.name.stem}-")]


@pytest_asyncio.fixture
async def bed(request: pytest.FixtureRequest) -> AsyncIterator[NetBed]:
    """Hosts ``a`` and ``b`` around a router; torn down after the test, checked gone.

    ``NetBed`` options come from an indirect parametrization, if any.
    """
    made = await open_bed(**getattr(request, "param", {}))
    try:
        yield made
    finally:
        await made.__aexit__(None, None, None)
    assert await leftovers(made) == []


@pytest_asyncio.fixture
async def echo(bed: NetBed) -> AsyncIterator[int]:
    """The port of a probe echo server (TCP and UDP) on all of ``b``'s addresses."""
    async with bed.spawn("b", "echo", "-m", PROBE, "echo", relay=False) as server:
        yield int((await server.ready()).rsplit(":", 1)[1])


async def probe(bed: NetBed, host: str, *args: str, check: bool = True) -> dict[str, Any]:
    """Run one probe client in ``host`` to its end; its ``RESULT``.

    With ``check``, a client that failed fails the test with what it printed.
    """
    async with bed.spawn(host, f"probe {args[0]}", "-m", PROBE, *args, relay=False) as client:
        status = await client.wait(PROBE_TIMEOUT)
    assert client.result is not None, client.tail()
    result: dict[str, Any] = json.loads(client.result)
    if check:
        assert status == 0, result
    return result


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
