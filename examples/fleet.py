"""A manager and its fleet: call every agent at once, and several workers under one name.

    .venv/bin/python examples/fleet.py [--agents N]

A bound "manager" and N connecting agents run in this process over the plain TCP transport.

* ``invoke_all`` asks every agent for its load in one call: the body is packed once, each
  agent maps to its answer or to the error its call raised (a slow agent past the timeout
  maps to ``TimeoutError``, and its handler is cancelled).
* Two manager workers connect to one agent under the same identity ("manager"), as several
  worker processes sharing one key would: both are served side by side, and each gets its
  own replies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import callosum_like as cl


async def run(agents: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        manager = await stack.enter_async_context(
            cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), identity="manager")
        )
        host, port = manager.address.rsplit(":", 1)
        address = cl.TCPAddress(host, int(port))
        for number in range(agents):
            agent = await stack.enter_async_context(
                cl.Peer(connect=address, identity=f"agent-{number}")
            )
            agent.handle_function("load", make_load(number))
        print(f"manager: {len(manager.peers)} agents connected")

        # One call to everyone; agent-0 is slow and misses the deadline.
        loads = await manager.invoke_all("load", {"window": "1m"}, timeout=1.0)
        for identity, outcome in loads.items():
            shown = type(outcome).__name__ if isinstance(outcome, Exception) else outcome
            print(f"manager: {identity} -> {shown}")
        answered = [v for v in loads.values() if not isinstance(v, Exception)]
        print(f"manager: {len(answered)} of {len(loads)} answered within 1 s")

        # Several workers of one principal: two connections, one identity, both served.
        agent = await stack.enter_async_context(
            cl.Peer(bind=cl.TCPAddress("127.0.0.1", 0), identity="agent-x")
        )
        agent.handle_function("whoami", lambda request: asyncio.sleep(0, request.body))
        host, port = agent.address.rsplit(":", 1)
        workers = [
            await stack.enter_async_context(
                cl.Peer(connect=cl.TCPAddress(host, int(port)), identity="manager")
            )
            for _ in range(2)
        ]
        replies = await asyncio.gather(
            *(worker.invoke("whoami", f"worker {n}") for n, worker in enumerate(workers))
        )
        print(f"agent-x: peers {sorted(agent.peers)}; replies {replies}")


def make_load(number: int) -> Callable[[cl.Request], Awaitable[float]]:
    async def load(request: cl.Request) -> float:
        if number == 0:
            await asyncio.sleep(3600)  # cancelled by the fan-out's timeout
        return round(random.uniform(0, 4), 2)

    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=5)
    asyncio.run(run(parser.parse_args().agents))


if __name__ == "__main__":
    main()
