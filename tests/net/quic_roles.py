"""The two roles of the QUIC migration test, each run in its own host of a bed.

``python -m tests.net.quic_roles server CERTDIR``: a bound Peer on QUIC on all of the host's
addresses; its ``slow`` handler answers after ``body`` seconds. Prints ``READY <port>``.

``python -m tests.net.quic_roles client CERTDIR HOST PORT SECONDS``: connects, starts one
``slow`` call, prints ``READY calling`` while it is in flight, and once it completes prints
``RESULT <json>``: the result, the events the Peer saw meanwhile, and its statistics.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import callosum_like as cl


async def slow(request: cl.Request) -> Any:
    await asyncio.sleep(float(request.body))
    return "done"


async def server(certs: str) -> None:
    transport = cl.QUICTransport(
        certfile=os.path.join(certs, "server.pem"), keyfile=os.path.join(certs, "server.key")
    )
    async with cl.Peer(bind=cl.QUICAddress("0.0.0.0", 0), transport=transport) as peer:
        peer.handle_function("slow", slow)
        print(f"READY {peer.address.rsplit(':', 1)[1]}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def client(certs: str, host: str, port: int, seconds: float) -> None:
    transport = cl.QUICTransport(cafile=os.path.join(certs, "ca.pem"), server_hostname="localhost")
    async with cl.Peer(
        connect=cl.QUICAddress(host, port),
        transport=transport,
        heartbeat_interval=0.3,
        heartbeat_timeout=10.0,
    ) as peer:
        seen: list[str] = []

        async def watch() -> None:
            async with peer.events() as events:
                async for event in events:
                    seen.append(event.kind.name)

        watcher = asyncio.create_task(watch())
        call = asyncio.create_task(peer.invoke("slow", seconds, timeout=60))
        await asyncio.sleep(0.2)  # the call has reached the server
        print("READY calling", flush=True)
        result = await call
        watcher.cancel()
        stats = peer.statistics()
        print(
            "RESULT "
            + json.dumps({"result": result, "events": seen, "reconnects": stats.reconnects}),
            flush=True,
        )


if __name__ == "__main__":
    role, certdir, *rest = sys.argv[1:]
    if role == "server":
        asyncio.run(server(certdir))
    else:
        asyncio.run(client(certdir, rest[0], int(rest[1]), float(rest[2])))
