"""The three orderings side by side, in one process (server and client on a free port).

    .venv/bin/python examples/ordering.py

Four calls share one ``order_key`` and are sent at once, in order 1 2 3 4. Their handler
sleeps 200, 50, 150 and 100 ms. The server registers the same handler three times, each
with its own ``ordering=`` (a per-method override of the peer's default), and logs when each
handler starts and finishes:

* UNORDERED  runs them together and replies as each finishes   (replies 2 4 3 1);
* ORDERED    runs them together, releases replies in arrival order (replies 1 2 3 4);
* SERIALIZED runs them one at a time, in arrival order           (at most 1 at once).

A last run shows that order keys are independent: under SERIALIZED, calls with two different
keys still run two at a time.
"""

from __future__ import annotations

import asyncio
import time

import callosum_like as cl

SLEEPS = {1: 0.20, 2: 0.05, 3: 0.15, 4: 0.10}


class Server:
    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []

    async def job(self, request: cl.Request) -> int:
        number = request.body
        self.log.append(("start", number))
        try:
            await asyncio.sleep(SLEEPS[number])
        finally:
            self.log.append(("finish", number))
        return number


async def burst(
    client: cl.Peer, server: Server, method: str, keys: list[str]
) -> tuple[list[int], float]:
    """Send calls 1..4 at once (call n with order key keys[n-1]); return reply order and time."""
    server.log.clear()
    replies: list[int] = []

    async def call(number: int, key: str) -> None:
        replies.append(await client.invoke(method, number, order_key=key))

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for number, key in zip(SLEEPS, keys, strict=True):
            group.create_task(call(number, key))
    return replies, time.perf_counter() - started


def describe(log: list[tuple[str, int]], replies: list[int], took: float) -> str:
    running = most = 0
    for event, _ in log:
        running += 1 if event == "start" else -1
        most = max(most, running)
    started = " ".join(str(n) for event, n in log if event == "start")
    finished = " ".join(str(n) for event, n in log if event == "finish")
    answered = " ".join(map(str, replies))
    return (
        f"started {started} | finished {finished} | replies {answered} | "
        f"at once {most} | {took:.2f} s"
    )


async def main() -> None:
    server = Server()
    async with cl.Peer(bind="tcp://127.0.0.1:0") as bound:
        for ordering in cl.Ordering:
            bound.handle_function(f"job.{ordering.name}", server.job, ordering=ordering)
        async with cl.Peer(connect=bound.address, invoke_timeout=5.0) as client:
            print("4 calls with order_key='k', sent in order 1 2 3 4;")
            print("the handler sleeps #1 200 ms, #2 50 ms, #3 150 ms, #4 100 ms\n")
            for ordering in cl.Ordering:
                replies, took = await burst(client, server, f"job.{ordering.name}", ["k"] * 4)
                print(f"{ordering.name:<11} {describe(server.log, replies, took)}")
            keys = ["a", "b", "a", "b"]
            replies, took = await burst(client, server, "job.SERIALIZED", keys)
            print(f"\nTwo order keys under SERIALIZED, calls 1 2 3 4 with keys {' '.join(keys)}:")
            print(f"{'two keys':<11} {describe(server.log, replies, took)}")


if __name__ == "__main__":
    asyncio.run(main())
