"""Both sides serve and both sides invoke, over the one connection the client opened.

    .venv/bin/python examples/bidirectional.py

A bound "hub" and a connecting "worker-1" run in this process, over the plain TCP transport
(``cl.TCPAddress``; a ZeroMQ address works the same). The worker calls the hub's
``translate``; *while serving that call* the hub calls the worker back (``lookup``, once per
word) to fetch what it needs, then answers. The hub also calls the worker on its own, by
identity (``to="worker-1"``), once ``wait_for_peer`` says it has connected.
"""

from __future__ import annotations

import asyncio

import callosum_like as cl

DICTIONARY = {"hello": "bonjour", "world": "monde"}


async def run() -> None:
    async with cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), identity="hub") as hub:

        async def translate(request: cl.Request) -> list[str]:
            print(f"hub     serving translate({request.body!r}) for {request.peer_id!r}")
            words = []
            for word in request.body:
                # A call back to the caller, made while its own call is still being served.
                found = await hub.invoke("lookup", word, to=request.peer_id)
                print(f"hub       -> {request.peer_id}.lookup({word!r}) = {found!r}")
                words.append(found)
            return words

        hub.handle_function("translate", translate)
        host, port = hub.address.rsplit(":", 1)
        print(f"hub     listening on {hub.address}")

        async with cl.Peer(
            connect=cl.TCPAddress(host, int(port)), identity="worker-1", invoke_timeout=5.0
        ) as worker:
            lookups = 0

            async def lookup(request: cl.Request) -> str:
                nonlocal lookups
                lookups += 1
                return DICTIONARY.get(request.body, "?")

            async def status(request: cl.Request) -> dict[str, int]:
                return {"lookups served": lookups}

            worker.handle_function("lookup", lookup)
            worker.handle_function("status", status)

            await hub.wait_for_peer("worker-1", timeout=5.0)
            print(f"hub     connected peers: {sorted(hub.peers)}")
            print(f"hub     -> worker-1.status() = {await hub.invoke('status', to='worker-1')}")

            print("worker  -> hub.translate(['hello', 'world'])")
            result = await worker.invoke("translate", ["hello", "world"])
            print(f"worker  <- {result!r}")

            print(f"hub     -> worker-1.status() = {await hub.invoke('status', to='worker-1')}")
            stats = worker.statistics()
            print(f"worker  statistics: {stats.calls_in} calls in, {stats.calls_out} calls out")


if __name__ == "__main__":
    asyncio.run(run())
