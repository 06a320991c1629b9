"""Count the work of one 64-byte echo: both peers in one process, for callgrind or cProfile.

Run it as ``tools/count_echo.py TRANSPORT IN_FLIGHT CALLS [--profile FILE]`` from a source
tree (``PYTHONPATH=$PWD``), e.g. under callgrind:

    valgrind --tool=callgrind python tools/count_echo.py tcp 64 512
    valgrind --tool=callgrind python tools/count_echo.py tcp 64 2560

Theory of operation: timings on a shared VM move by 15-30 % between runs, more than most
changes to the per-call path, so per-change decisions are made by counting instead
(docs/performance.md, "Where the time goes"). This script binds a Peer serving ``echo``
(TCP on 127.0.0.1 port 0, or ZeroMQ), connects a second Peer to it in the same process and
loop (uvloop when installed), warms up with 500 echoes, then makes ``CALLS`` echoes with
``IN_FLIGHT`` of them in flight. The instructions of one echo are the difference between two
callgrind runs of different ``CALLS``, divided by the difference in calls: start-up and
warm-up cancel out. It prints calls/s and CPU per call (for a rough look only);
``--profile FILE`` writes a cProfile of the measured calls instead.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import time

from callosum_like import Peer, Request
from callosum_like.tools.child import bind_address, connect_address, run_loop

WARM_UP = 500


async def _echo(request: Request) -> object:
    return request.body


async def _echoes(peer: Peer, calls: int, in_flight: int) -> None:
    body = os.urandom(64)

    async def caller(count: int) -> None:
        for _ in range(count):
            await peer.invoke("echo", body)

    async with asyncio.TaskGroup() as group:
        for _ in range(in_flight):
            group.create_task(caller(calls // in_flight))


async def _main(
    transport: str, in_flight: int, calls: int, profile: str | None, timeout: float | None
) -> None:
    async with Peer(bind=bind_address(transport), identity="server") as server:
        server.handle_function("echo", _echo)
        address = connect_address(transport, str(server.address))
        async with Peer(connect=address, identity="client", invoke_timeout=timeout) as client:
            await _echoes(client, WARM_UP, in_flight)
            profiler = cProfile.Profile()
            wall, cpu = time.perf_counter(), time.process_time()
            if profile is not None:
                profiler.enable()
            await _echoes(client, calls, in_flight)
            if profile is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            done = calls // in_flight * in_flight
            print(
                f"{transport}, {in_flight} in flight, {done} echoes: {done / wall:,.0f}/s, ", end=""
            )
            print(f"{cpu / done * 1e6:.1f} us CPU each (both peers)")


def main() -> None:
    """The command line (module doc)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("transport", choices=("tcp", "zeromq"))
    parser.add_argument("in_flight", type=int)
    parser.add_argument("calls", type=int)
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the calls here")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="the client's invoke_timeout (the bench sets 120; default none)",
    )
    args = parser.parse_args()
    echoes = _main(args.transport, args.in_flight, args.calls, args.profile, args.timeout)
    run_loop(echoes, args.loop)


if __name__ == "__main__":
    main()
