"""Federation on NATS: a manager on a hub server calls agents behind a leaf node, and back.

    .venv/bin/python examples/nats_federation.py            # or: make demo-nats

The demo starts two ``nats-server`` processes on 127.0.0.1: a *hub*, and a *leaf node* that
dials out to the hub (``leafnodes { remotes = [...] }``), as a server behind a firewall or
NAT would. The manager serves subject ``fleet.manager`` through the hub; two agents connect
through the leaf. The manager calls each agent's ``hello``, and each agent, while it answers,
calls the manager's ``report`` back: the scenario of examples/federation/ with no relay of
ours (docs/nats.md). It needs ``nats-server`` (``make install`` puts one in .venv/bin).

The roles also run on their own, one per process (tests/net/test_nats_leaf.py runs them in
network namespaces):

    .venv/bin/python examples/nats_federation.py manager nats://HUB:PORT --agents 2
    .venv/bin/python examples/nats_federation.py agent nats://LEAF:PORT agent-1

The manager prints ``READY`` once it serves, then greets the agents as they come and
prints a ``RESULT`` line (JSON); each role serves until its stdin ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import callosum_like as cl
from callosum_like.tools.child import wait_for_stdin_eof
from callosum_like.tools.nats_server import NATSServer

SUBJECT = "fleet.manager"


def manager_peer(url: str) -> cl.Peer:
    manager = cl.Peer(bind=cl.NATSAddress(url, SUBJECT), identity="manager")

    async def report(request: cl.Request) -> Any:
        print(f"manager  <- {request.peer_id} reports {request.body}", flush=True)
        return f"noted, {request.peer_id}"

    manager.handle_function("report", report)
    return manager


def agent_peer(url: str, name: str) -> cl.Peer:
    agent = cl.Peer(
        connect=cl.NATSAddress(url, SUBJECT),
        identity=name,
        transport=cl.NATSTransport(identity=name),  # the subject token NATS can confine
        connect_timeout=20,
    )

    async def hello(request: cl.Request) -> Any:
        said = await agent.invoke("report", {"pid": os.getpid()}, timeout=10)
        return f"hello {request.body} from {name}; the manager said {said!r}"

    agent.handle_function("hello", hello)
    return agent


async def greet(manager: cl.Peer, names: list[str]) -> dict[str, str]:
    for name in names:
        await manager.wait_for_peer(name, timeout=20)
    greetings = {}
    for name in names:
        greetings[name] = await manager.invoke("hello", "manager", to=name, timeout=10)
        print(f"manager  -> {name}.hello() = {greetings[name]!r}", flush=True)
    return greetings


async def run_manager(url: str, agents: int) -> None:
    async with manager_peer(url) as manager:
        print(f"READY {manager.address}", flush=True)
        greetings = await greet(manager, [f"agent-{n}" for n in range(1, agents + 1)])
        print(f"RESULT {json.dumps(greetings)}", flush=True)
        await wait_for_stdin_eof()


async def run_agent(url: str, name: str) -> None:
    async with agent_peer(url, name) as agent:
        print(f"READY {agent.address}", flush=True)
        await wait_for_stdin_eof()


async def demo() -> None:
    with NATSServer('leafnodes { listen: "127.0.0.1:-1" }', name="hub") as hub:
        remote = f"nats-leaf://127.0.0.1:{hub.leafnode_port()}"
        leaf_config = f'leafnodes {{ remotes = [ {{ url: "{remote}" }} ] }}'
        with NATSServer(leaf_config, name="leaf") as leaf:
            hub.wait_for_log("Leafnode connection created")
            print(f"hub at {hub.url}, leaf node at {leaf.url} (dialled out to the hub)")
            async with (
                manager_peer(hub.url) as manager,
                agent_peer(leaf.url, "agent-1"),
                agent_peer(leaf.url, "agent-2"),
            ):
                await greet(manager, ["agent-1", "agent-2"])
    print("demo finished")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    roles = parser.add_subparsers(dest="role")
    manager = roles.add_parser("manager", help="serve on a hub server")
    manager.add_argument("url")
    manager.add_argument("--agents", type=int, default=2)
    agent = roles.add_parser("agent", help="connect through a (leaf) server")
    agent.add_argument("url")
    agent.add_argument("name")
    args = parser.parse_args()
    if args.role == "manager":
        asyncio.run(run_manager(args.url, args.agents))
    elif args.role == "agent":
        asyncio.run(run_agent(args.url, args.name))
    else:
        asyncio.run(demo())


if __name__ == "__main__":
    main()
