"""A federation relay: binds for the agents of a cluster, and connects upstream over one link.

    .venv/bin/python examples/federation/relay.py --name cluster-a \
        --bind tcp://127.0.0.1:0 --upstream tcp://127.0.0.1:5555

It prints ``<name> listening on <address>`` and, once the upstream link is open,
``<name> connected upstream``. Agents that connect to it are reachable from the manager as
``<name>/<agent>``; relays can connect to relays (``cluster-a/cluster-b/agent-3``). It runs
until SIGTERM or Ctrl-C; killed and restarted at the same address, its agents reconnect and
reappear upstream by themselves.

Options: ``--keys DIR --allow agent-1,agent-2 --upstream-name manager`` turns CURVE on for
both hops: the relay's keypair is ``DIR/<name>``, its local side allows the named agents,
and it connects upstream with the public key of ``DIR/<upstream-name>``. See
examples/federation/demo.py and docs/federation.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import cli

import callosum_like as cl


async def run(args: argparse.Namespace) -> int:
    async with cl.Relay(
        bind=args.bind,
        upstream=args.upstream,
        identity=args.name,
        authenticator=cli.server_auth(args, args.name),
        upstream_authenticator=cli.client_auth(args, args.name, args.upstream_name),
        **cli.HEARTBEAT,
    ) as relay:
        print(f"{args.name} listening on {relay.address}", flush=True)
        upstream = asyncio.create_task(relay.wait_upstream())
        stop = asyncio.create_task(cli.wait_for_stop(args))
        await asyncio.wait([upstream, stop], return_when=asyncio.FIRST_COMPLETED)
        if upstream.done():
            print(f"{args.name} connected upstream", flush=True)
            await stop
        upstream.cancel()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="the relay's name")
    parser.add_argument("--bind", default="tcp://127.0.0.1:0", help="ZeroMQ address to bind")
    parser.add_argument("--upstream", required=True, help="ZeroMQ address of the manager")
    parser.add_argument("--upstream-name", default="manager", help="whose key to expect")
    cli.add_common_options(parser)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
