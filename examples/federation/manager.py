"""A federation manager: calls agents behind relays by name, and serves their reports.

    .venv/bin/python examples/federation/manager.py --bind tcp://127.0.0.1:5555

It binds, prints ``manager listening on <address>``, and then, for every peer that appears
(directly, or announced by a relay as ``cluster-a/agent-1``), calls its ``hello``. Agents
call back into ``report`` while they answer. Relays serve nothing of their own, so for
them the call says so. It runs until SIGTERM or Ctrl-C, or with ``--expect N`` until N
agents have said hello.

Options: ``--keys DIR --allow cluster-a,cluster-b`` turns CURVE on (the manager's keypair
is ``DIR/manager``; only the named relays may connect, each under its own name). See
examples/federation/demo.py for all three scripts together, and docs/federation.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import cli

import callosum_like as cl


async def run(args: argparse.Namespace) -> int:
    greeted: set[str] = set()
    done = asyncio.Event()
    async with cl.Peer(
        bind=args.bind,
        identity="manager",
        authenticator=cli.server_auth(args, "manager"),
        **cli.HEARTBEAT,
    ) as manager:

        async def report(request: cl.Request) -> Any:
            print(f"manager  <- {request.peer_id} reports {request.body!r}", flush=True)
            return f"noted, {request.peer_id}"

        async def greet(name: str) -> None:
            try:
                answer = await manager.invoke("hello", "manager", to=name, timeout=10)
            except cl.MethodNotFoundError:
                print(f"manager  -- {name} is a relay", flush=True)
                return
            except cl.RPCError as exc:  # it went away meanwhile, or timed out
                print(f"manager  -> {name}.hello() failed: {exc!r}", flush=True)
                return
            print(f"manager  -> {name}.hello() = {answer!r}", flush=True)
            greeted.add(name)
            if args.expect and len(greeted) >= args.expect:
                done.set()

        manager.handle_function("report", report)
        print(f"manager listening on {manager.address}", flush=True)
        tasks: set[asyncio.Task[None]] = set()
        async with manager.events() as events:

            async def watch() -> None:
                async for event in events:
                    print(f"manager  .. {event.identity} {event.kind.value}", flush=True)
                    if event.kind is cl.PeerEventKind.CONNECTED:
                        task = asyncio.create_task(greet(event.identity))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)

            watcher = asyncio.create_task(watch())
            stop = asyncio.create_task(cli.wait_for_stop(args))
            finished = asyncio.create_task(done.wait())
            await until_finished(args, greeted, finished, stop, watcher)
            for task in (watcher, stop, finished, *tasks):
                task.cancel()
            await asyncio.gather(watcher, stop, finished, *tasks, return_exceptions=True)
    print(f"manager  done: greeted {len(greeted)} agents", flush=True)
    return 0


async def until_finished(
    args: argparse.Namespace,
    greeted: set[str],
    finished: asyncio.Task[Any],
    stop: asyncio.Task[Any],
    watcher: asyncio.Task[Any],
) -> None:
    """Until the expected agents said hello (then, with --wait-after, until stopped)."""
    await asyncio.wait([stop, finished, watcher], return_when=asyncio.FIRST_COMPLETED)
    if finished.done() and args.wait_after:
        print(f"manager  all {len(greeted)} agents greeted", flush=True)
        await asyncio.wait([stop, watcher], return_when=asyncio.FIRST_COMPLETED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:0", help="ZeroMQ address to bind")
    parser.add_argument("--expect", type=int, default=0, help="exit after N agents said hello")
    parser.add_argument(
        "--wait-after",
        action="store_true",
        help="with --expect: after N agents said hello, say so and run on until stopped",
    )
    cli.add_common_options(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
