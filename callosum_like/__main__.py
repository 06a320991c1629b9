"""The command line: ``python -m callosum_like {keygen,demo,bench}`` (also ``callosum-like``).

Theory of operation: ``main`` parses the arguments and calls one function per subcommand;
each returns the process exit status (0 success, 1 failure, 2 usage error from argparse).

* ``keygen PATH`` writes a CURVE keypair as the ZeroMQ certificates ``PATH.key`` and
  ``PATH.key_secret`` (mode 0600) with ``auth.save_keypair`` and prints the public key on
  stdout, so ``KEY=$(python -m callosum_like keygen server)`` works.
* ``demo`` runs ``demo.run_demo``: a server process and a client process calling each other.
* ``bench`` measures 64-byte echo calls against a server in another process, over each
  transport: sequential calls/s with p50/p99 latency, and calls/s with 64 calls in flight.
  It prints a table and writes JSON (with versions and host facts) to
  ``bench/results/latest.json``.

``demo-server``, ``demo-client`` and ``bench-server`` are hidden subcommands: the child
processes of ``demo`` and ``bench``.

This is the top layer: nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import zmq

from .auth import generate_keypair, save_keypair
from .demo import (
    TRANSPORTS,
    ChildProcess,
    bind_address,
    connect_address,
    ignore_sigint,
    run_demo,
    run_demo_client,
    serve_demo,
    wait_for_stdin_eof,
)
from .peer import Peer
from .request import Body, Request

__all__ = ["main"]

#: Bytes in each benchmark call's body (and in its reply).
BENCH_BODY: Final = b"x" * 64
#: Calls kept in flight by the concurrent measurement.
BENCH_IN_FLIGHT: Final = 64
#: Seconds each measurement runs, for a full run and for ``--quick``.
BENCH_SECONDS: Final = 3.0
QUICK_SECONDS: Final = 0.5
#: Calls made before measuring, so connection set-up and first-call costs stay out.
WARMUP_CALLS: Final = 200
#: Seconds any single benchmark call may take before the run is declared broken.
BENCH_CALL_TIMEOUT: Final = 10.0
DEFAULT_BENCH_OUTPUT: Final = Path("bench/results/latest.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m callosum_like",
        description="callosum_like: bidirectional asyncio RPC over ZeroMQ or TCP.",
    )
    commands = parser.add_subparsers(title="commands", metavar="{keygen,demo,bench}", required=True)

    keygen = commands.add_parser(
        "keygen",
        help="write a CURVE keypair to PATH.key and PATH.key_secret",
        description="Write a CURVE keypair as ZeroMQ certificates PATH.key (public) and "
        "PATH.key_secret (secret, mode 0600); print the public key.",
    )
    keygen.add_argument("path", metavar="PATH", help="base path of the two files")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(command=_keygen)

    demo = commands.add_parser(
        "demo",
        help="run a server process and a client process that call each other",
        description="Start a server process and a client process on 127.0.0.1 and show "
        "calls both ways, the three orderings, and errors crossing the wire.",
    )
    _transport_option(demo, "the transport to use (default: zeromq)")
    demo.set_defaults(command=_demo)

    bench = commands.add_parser(
        "bench",
        help="measure echo calls against a server in another process",
        description="Measure 64-byte echo calls against a server process on 127.0.0.1: "
        f"sequential calls/s with p50/p99 latency, and calls/s with {BENCH_IN_FLIGHT} in "
        "flight, over each transport.",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help=f"measure {QUICK_SECONDS} s instead of {BENCH_SECONDS} s per figure",
    )
    bench.add_argument(
        "--transport",
        dest="transports",
        action="append",
        choices=TRANSPORTS,
        help="a transport to measure; repeat for several (default: all)",
    )
    bench.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_BENCH_OUTPUT,
        help=f"where to write the JSON results (default: {DEFAULT_BENCH_OUTPUT})",
    )
    bench.set_defaults(command=_bench)

    # The child processes of demo and bench; not listed in --help.
    demo_server = commands.add_parser("demo-server")
    _transport_option(demo_server)
    demo_server.add_argument("--keys")
    demo_server.set_defaults(command=_demo_server)
    demo_client = commands.add_parser("demo-client")
    _transport_option(demo_client)
    demo_client.add_argument("--connect", required=True)
    demo_client.add_argument("--keys")
    demo_client.set_defaults(command=_demo_client)
    bench_server = commands.add_parser("bench-server")
    _transport_option(bench_server)
    bench_server.set_defaults(command=_bench_server)
    return parser


def _transport_option(parser: argparse.ArgumentParser, text: str | None = None) -> None:
    parser.add_argument("--transport", choices=TRANSPORTS, default="zeromq", help=text)


# --- keygen ---------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    keypair = generate_keypair()
    try:
        public_path, secret_path = save_keypair(keypair, args.path, overwrite=args.force)
    except FileExistsError as exc:
        print(f"keygen: {exc.filename} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"keygen: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {public_path} (public) and {secret_path} (secret, mode 0600)", file=sys.stderr)
    print(keypair.public.decode("ascii"))
    return 0


# --- demo -----------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo(args.transport))


def _demo_server(args: argparse.Namespace) -> int:
    return asyncio.run(serve_demo(args.transport, args.keys))


def _demo_client(args: argparse.Namespace) -> int:
    return asyncio.run(run_demo_client(args.transport, args.connect, args.keys))


# --- bench ----------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    seconds = QUICK_SECONDS if args.quick else BENCH_SECONDS
    transports: list[str] = args.transports or list(TRANSPORTS)
    mode = "quick, " if args.quick else ""
    print(
        f"callosum_like bench ({mode}{seconds} s per figure): {len(BENCH_BODY)}-byte echo calls "
        "to a server process on 127.0.0.1"
    )
    try:
        results = [asyncio.run(_bench_transport(name, seconds)) for name in transports]
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _print_table(results)
    report = {
        "benchmark": "echo",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "seconds_per_figure": seconds,
        "body_bytes": len(BENCH_BODY),
        "in_flight": BENCH_IN_FLIGHT,
        "versions": _versions(),
        "host": _host(),
        "results": results,
    }
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


async def _bench_transport(transport: str, seconds: float) -> dict[str, Any]:
    async with ChildProcess(
        f"bench-server ({transport})", ["bench-server", "--transport", transport]
    ) as server:
        address = await server.ready()
        async with Peer(
            connect=connect_address(transport, address),
            identity="bench-client",
            invoke_timeout=BENCH_CALL_TIMEOUT,
        ) as client:
            for _ in range(WARMUP_CALLS):
                await client.invoke("echo", BENCH_BODY)
            sequential = await _sequential(client, seconds)
            concurrent = await _concurrent(client, seconds)
    return {"transport": transport, "sequential": sequential, "concurrent": concurrent}


async def _sequential(client: Peer, seconds: float) -> dict[str, Any]:
    """One call at a time for ``seconds``: calls/s and latency percentiles."""
    latencies: list[float] = []
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds
    while (sent := clock()) < deadline:
        await client.invoke("echo", BENCH_BODY)
        latencies.append(clock() - sent)
    elapsed = clock() - started
    latencies.sort()
    return {
        "calls": len(latencies),
        "seconds": round(elapsed, 3),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_us": round(_percentile(latencies, 50) * 1e6, 1),
        "p99_us": round(_percentile(latencies, 99) * 1e6, 1),
    }


async def _concurrent(client: Peer, seconds: float) -> dict[str, Any]:
    """``BENCH_IN_FLIGHT`` callers, each calling again as soon as its reply arrives."""
    calls = 0
    clock = time.perf_counter
    deadline = clock() + seconds

    async def caller() -> None:
        nonlocal calls
        while clock() < deadline:
            await client.invoke("echo", BENCH_BODY)
            calls += 1

    started = clock()
    async with asyncio.TaskGroup() as group:
        for _ in range(BENCH_IN_FLIGHT):
            group.create_task(caller())
    elapsed = clock() - started
    return {
        "in_flight": BENCH_IN_FLIGHT,
        "calls": calls,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(calls / elapsed, 1),
    }


def _percentile(ordered: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _print_table(results: Sequence[dict[str, Any]]) -> None:
    header = (
        "transport",
        "sequential calls/s",
        "p50",
        "p99",
        f"{BENCH_IN_FLIGHT} in flight calls/s",
    )
    rows = [
        (
            r["transport"],
            f"{r['sequential']['calls_per_s']:,.0f}",
            f"{r['sequential']['p50_us']:,.0f} us",
            f"{r['sequential']['p99_us']:,.0f} us",
            f"{r['concurrent']['calls_per_s']:,.0f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    print()
    for row in (header, *rows):
        cells = [
            row[0].ljust(widths[0]),
            *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)),
        ]
        print("   ".join(cells))
    print()


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "libzmq": zmq.zmq_version()}
    for dist in ("callosum-like", "pyzmq", "msgpack", "aiojobs", "cramjam"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def _host() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python_implementation": platform.python_implementation(),
        "event_loop": "asyncio",
    }


def _bench_server(args: argparse.Namespace) -> int:
    return asyncio.run(_serve_bench(args.transport))


async def _serve_bench(transport: str) -> int:
    """The benchmark's server process: echo until stdin closes."""
    ignore_sigint()

    async def echo(request: Request) -> Body:
        return request.body

    async with Peer(bind=bind_address(transport), identity="bench-server") as server:
        server.handle_function("echo", echo)
        print(f"READY {server.address}", flush=True)
        await wait_for_stdin_eof()
    return 0


if __name__ == "__main__":
    sys.exit(main())
