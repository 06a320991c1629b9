"""Memory stays bounded while large amounts stream, in both directions, in both processes.

The benchmark (W5) moves 1 GiB and reports the RSS growth against a 64 MiB budget; this test
moves 256 MiB each way with a budget scaled down to 32 MiB, so it is quick enough for every
run of the suite. The server is a separate process, so each side's RSS is its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest

import callosum_like as cl

from .certs import quic_client_options, quic_server_options
from .conftest import PROXY_TRANSPORTS

pytestmark = pytest.mark.timeout(120)

TOTAL = 256 * 2**20
ITEM = 256 * 1024
BUDGET = 32 * 2**20

SERVER = textwrap.dedent(
    """
    import asyncio, sys
    import callosum_like as cl

    def rss() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    peak = 0

    async def sample() -> None:
        global peak
        while True:
            peak = max(peak, rss())
            await asyncio.sleep(0.005)

    async def produce(request):
        item = bytes(request.body["item"])
        for _ in range(request.body["count"]):
            yield item

    async def consume(request):
        size = 0
        async for part in request.body:
            size += len(part)
        return size

    async def reset(request):
        global peak
        peak = rss()
        return peak

    async def report(request):
        return peak

    async def main() -> None:
        kind = sys.argv[1]
        transport = None
        if kind == "quic":
            from tests.certs import quic_server_options
            bind = cl.QUICAddress("127.0.0.1", 0)
            transport = cl.QUICTransport(**quic_server_options())
        elif kind == "zeromq":
            bind = "tcp://127.0.0.1:0"
        else:
            bind = cl.TCPAddress("127.0.0.1", 0)
        async with cl.Peer(bind=bind, transport=transport) as server:
            for name, handler in [
                ("produce", produce), ("consume", consume), ("reset", reset), ("report", report)
            ]:
                server.handle_function(name, handler)
            sampler = asyncio.create_task(sample())
            print(server.address, flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def uploaded(count: int) -> AsyncIterator[bytes]:
    item = os.urandom(ITEM)
    for _ in range(count):
        yield item


# Not NATS (child processes). QUIC moves a quarter as much: it is that much slower.
@pytest.mark.transports(*PROXY_TRANSPORTS, "quic")
@pytest.mark.asyncio
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
async def test_streaming_256_mib_each_way_keeps_both_processes_within_budget(
    transport_kind: str,
) -> None:
    # QUIC: the test certificates exist (named in the environment) before the server starts
    transport = None
    if transport_kind == "quic":
        quic_server_options()
        transport = cl.QUICTransport(**quic_client_options())
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, transport_kind],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss())
            await asyncio.sleep(0.005)

    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        address: Any = line.strip()
        if transport_kind != "zeromq":
            host, port = address.rsplit(":", 1)
            address = (cl.QUICAddress if transport_kind == "quic" else cl.TCPAddress)(
                host, int(port)
            )
        total = TOTAL // 4 if transport_kind == "quic" else TOTAL
        async with cl.Peer(connect=address, transport=transport) as client:
            # Warm up both directions once, so that allocator pools are not counted as growth.
            count = total // ITEM
            async for _ in client.stream("produce", {"item": b"x" * ITEM, "count": 20}):
                pass
            assert await client.invoke("consume", uploaded(20)) == 20 * ITEM
            server_base = await client.invoke("reset")
            base = peak = rss()
            sampler = asyncio.create_task(sample())
            received = 0
            async for item in client.stream("produce", {"item": b"y" * ITEM, "count": count}):
                received += len(item)
            assert received == total
            assert await client.invoke("consume", uploaded(count)) == total
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            server_peak = await client.invoke("report")
        client_growth, server_growth = peak - base, server_peak - server_base
        assert client_growth < BUDGET, f"client grew {client_growth / 2**20:.1f} MiB"
        assert server_growth < BUDGET, f"server grew {server_growth / 2**20:.1f} MiB"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
