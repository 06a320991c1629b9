"""A federation agent: connects out to its relay and serves the manager.

    .venv/bin/python examples/federation/agent.py --name agent-1 --connect tcp://127.0.0.1:5556

It connects to a relay (or straight to a manager) and serves ``hello``: while answering,
it calls back into the manager's ``report`` through the same link. It runs until SIGTERM
or Ctrl-C; when its relay restarts, it reconnects by itself (ZeroMQ). If it cannot connect
within ``--connect-timeout`` seconds it prints why and exits with status 1.

Options: ``--keys DIR --server-name cluster-a`` turns CURVE on: the agent's keypair is
``DIR/<name>`` and it expects the public key of ``DIR/<server-name>``. See
examples/federation/demo.py and docs/federation.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import cli

import callosum_like as cl


async def run(args: argparse.Namespace) -> int:
    agent = cl.Peer(
        connect=args.connect,
        identity=args.name,
        authenticator=cli.client_auth(args, args.name, args.server_name),
        connect_timeout=args.connect_timeout,
        **cli.HEARTBEAT,
    )

    async def hello(request: cl.Request) -> Any:
        said = await agent.invoke("report", {"pid": os.getpid(), "busy": False}, timeout=10)
        return f"hello {request.body} from {args.name}; the manager said {said!r}"

    # Serve before connecting: the manager may call as soon as the relay announces us.
    agent.handle_function("hello", hello)
    try:
        await agent.__aenter__()
    except (cl.RPCError, OSError) as exc:
        print(f"{args.name} could not connect to {args.connect}: {exc!r}", flush=True)
        return 1
    try:
        print(f"{args.name} connected to {args.connect}", flush=True)
        await cli.wait_for_stop(args)
    finally:
        await agent.aclose()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="the agent's name")
    parser.add_argument("--connect", required=True, help="ZeroMQ address of its relay")
    parser.add_argument("--server-name", default="", help="whose key to expect (with --keys)")
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds")
    cli.add_common_options(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
