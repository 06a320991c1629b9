"""The command line: ``python -m callosum_like {keygen,demo,bench,soak}`` (``callosum-like``).

Theory of operation: ``main`` parses the arguments and calls one function per subcommand;
each returns the process exit status (0 success, 1 failure, 2 usage error from argparse).

* ``keygen PATH`` writes a CURVE keypair as the ZeroMQ certificates ``PATH.key`` and
  ``PATH.key_secret`` (mode 0600) with ``auth.save_keypair`` and prints the public key on
  stdout, so ``KEY=$(python -m callosum_like keygen server)`` works.
* ``demo`` runs ``tools.demo.run_demo``: a server process and a client process calling each
  other.
* ``bench`` runs ``tools.bench.cli.run_bench``: this project over each transport beside
  callosum 1.0.3, grpc.aio, raw pyzmq and raw asyncio streams, a server and a client process
  per (system, workload); it prints tables and writes JSON, Markdown and a chart under
  ``bench/results/``.
* ``soak`` runs ``tools.soak.cli.run_soak``: a bounded load of calls, streams and short-lived
  clients while the server process is killed and restarted; it reports failures by kind and
  memory. ``soak --churn`` is the churn soak instead: a fleet of agents, a share of them
  replaced every interval, the bound side's memory and open files watched.

``demo-server``, ``demo-client``, ``bench-server``, ``bench-client``, ``bench-hub``,
``fleet-agents`` and ``soak-server`` are hidden subcommands: the child processes of ``demo``,
``bench`` and ``soak``. The commands live in ``callosum_like.tools``, the layer just below
this one and above the library.

This is the top layer: nothing in the package imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from .keys import generate_keypair, save_keypair
from .tools.bench.children import (
    add_client_arguments,
    add_server_arguments,
    run_bench_client,
    run_bench_server,
)
from .tools.bench.cli import add_bench_arguments, run_bench
from .tools.bench.hub import add_hub_arguments, run_bench_hub
from .tools.child import BENCH_TRANSPORTS, TRANSPORTS
from .tools.demo import run_demo, run_demo_client, serve_demo
from .tools.fleet import add_agents_arguments, run_agents
from .tools.soak.cli import add_soak_arguments, run_soak
from .tools.soak.server import add_soak_server_arguments, run_soak_server

__all__ = ["main"]


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
    commands = parser.add_subparsers(
        title="commands", metavar="{keygen,demo,bench,soak}", required=True
    )

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
        help="measure this project beside callosum, grpc.aio, raw pyzmq and raw asyncio",
        description="Run each (system, workload) as a server process and a client process "
        "on 127.0.0.1: W1 64-byte echo one in flight, W2 64 in flight, W3 1 MiB and 16 MiB "
        "echoes, W4 small calls beside 16 MiB echoes, W5 a 1 GiB stream. Prints tables; "
        "writes JSON, Markdown and a PNG chart (see docs/performance.md).",
    )
    add_bench_arguments(bench)
    bench.set_defaults(command=run_bench)

    soak = commands.add_parser(
        "soak",
        help="run a bounded load while killing and restarting the server; report failures",
        description="Start a server process per transport, flood it, then run mixed calls, "
        "streams and short-lived clients against it for --duration seconds while killing "
        "(SIGKILL) and restarting it every --kill-interval seconds. Reports calls made, "
        "failures by kind and resident memory; exits 1 if anything but "
        "PeerDisconnectedError during a kill failed. With --churn, the churn soak instead: "
        "--agents connecting peers in other processes, a share replaced every "
        "--churn-interval, the bound side's memory and open files watched (exits 1 unless "
        "they stay flat).",
    )
    add_soak_arguments(soak)
    soak.set_defaults(command=run_soak)

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
    _transport_option(bench_server, choices=BENCH_TRANSPORTS)
    add_server_arguments(bench_server)
    bench_server.set_defaults(command=run_bench_server)
    bench_client = commands.add_parser("bench-client")
    _transport_option(bench_client, choices=BENCH_TRANSPORTS)
    add_client_arguments(bench_client)
    bench_client.set_defaults(command=run_bench_client)
    bench_hub = commands.add_parser("bench-hub")
    _transport_option(bench_hub)
    add_hub_arguments(bench_hub)
    bench_hub.set_defaults(command=run_bench_hub)
    fleet_agents = commands.add_parser("fleet-agents")
    add_agents_arguments(fleet_agents)
    fleet_agents.set_defaults(command=run_agents)
    soak_server = commands.add_parser("soak-server")
    add_soak_server_arguments(soak_server)
    soak_server.set_defaults(command=run_soak_server)
    return parser


def _transport_option(
    parser: argparse.ArgumentParser,
    text: str | None = None,
    choices: tuple[str, ...] = TRANSPORTS,
) -> None:
    parser.add_argument("--transport", choices=choices, default="zeromq", help=text)


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


if __name__ == "__main__":
    sys.exit(main())
