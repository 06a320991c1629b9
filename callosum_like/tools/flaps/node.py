"""A node of the flap load: a manager, an agent or a relay, run inside a host of a bed.

Run as ``python -m callosum_like.tools.flaps.node --role ROLE ...`` inside a host of a
``NetBed`` (``stage.Stage`` does that). Theory of operation:

* ``manager``: a resumable ``Peer`` bound on the host's address (``--bind``); ``agent``: one
  connected to ``--connect``. Each serves and makes the load of ``load.Load``.
* ``relay``: a resumable ``Relay`` bound on ``--bind`` and connected to ``--upstream``; it
  has no load of its own.

A manager or an agent is steered by the parent through a second, ordinary Peer that connects
to the parent's *conductor* over a Unix socket (``--control``): a path in the file system,
shared by every network namespace and untouched by the bed's knobs, so the parent reaches
its nodes while their network is down. It is known there by ``--name`` and serves
``start``, ``stop``, ``books``, ``progress``, ``statistics``, ``hold``, ``held``,
``blocked``, ``measure`` and ``probe`` (see ``Load``; ``stage.Stage.ask`` calls them).

Once open (an agent: its handshake done; a relay: connected upstream), a node prints
``READY <address>`` and serves until its stdin closes. To see where a node waits, send it
``SIGUSR1`` (the threads' stacks, ``faulthandler``) or ``SIGUSR2`` (every asyncio task's).

Only the parent's tools start it; nothing imports it but its own ``__main__`` guard.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import faulthandler
import signal
import sys
from collections.abc import Sequence
from typing import Any, Final

from ...addresses import UnixAddress
from ...peer import Peer
from ...relay import Relay
from ...request import Body, Request
from ..child import TRANSPORTS, announce, bind_address, connect_address, ignore_sigint
from .load import Load

__all__ = ["ROLES", "WAIT_TIMEOUT", "CONTROL_METHODS", "main"]

#: What a node can be.
ROLES: Final = ("manager", "agent", "relay")
#: Seconds a node waits for its remote (the upstream, a target of its load) to connect.
WAIT_TIMEOUT: Final = 30.0
#: What the conductor may ask of a manager or an agent.
CONTROL_METHODS: Final = (
    "start",
    "stop",
    "books",
    "progress",
    "statistics",
    "hold",
    "held",
    "blocked",
    "measure",
    "probe",
)


def _working_peer(args: argparse.Namespace) -> Peer:
    where: dict[str, Any] = (
        {"bind": bind_address(args.transport, host=args.bind)}
        if args.role == "manager"
        else {"connect": connect_address(args.transport, args.connect)}
    )
    return Peer(
        **where,
        identity=args.identity,
        resume_timeout=args.resume_timeout,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
    )


class _Steering:
    """The control methods of a node (``CONTROL_METHODS``), over its ``load``."""

    def __init__(self, load: Load) -> None:
        self._load = load

    def register(self, control: Peer) -> None:
        """Serve every control method on ``control``."""
        for name in CONTROL_METHODS:
            control.handle_function(name, getattr(self, name))

    async def start(self, request: Request) -> Body:
        body = _mapping(request)
        for target in body["targets"]:
            if target is not None:
                await self._load.peer.wait_for_peer(target, timeout=WAIT_TIMEOUT)
        self._load.start(body["targets"], body["spec"])
        return None

    async def stop(self, request: Request) -> Body:
        await self._load.stop(float(_mapping(request)["drain"]))
        return None

    async def books(self, request: Request) -> Body:
        return self._load.books.report()

    async def progress(self, request: Request) -> Body:
        return self._load.books.succeeded

    async def statistics(self, request: Request) -> Body:
        snapshot = dataclasses.asdict(self._load.peer.statistics())
        return {key: _plain(value) for key, value in snapshot.items()}

    async def hold(self, request: Request) -> Body:
        body = _mapping(request)
        return self._load.hold(body["targets"], int(body["count"]))

    async def held(self, request: Request) -> Body:
        return await self._load.held()

    async def blocked(self, request: Request) -> Body:
        return self._load.blocked

    async def measure(self, request: Request) -> Body:
        body = _mapping(request)
        return await self._load.measure(body["target"], body["spec"])

    async def probe(self, request: Request) -> Body:
        body = _mapping(request)
        return await self._load.probe(body["targets"], body["remote"], float(body["wait"]))


def _mapping(request: Request) -> dict[str, Any]:
    body = request.body
    assert isinstance(body, dict)
    return body


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _show_tasks() -> None:
    """Print every asyncio task with its stack (on SIGUSR2: where a node waits)."""
    for task in asyncio.all_tasks():
        print(f"--- {task!r}", flush=True)
        task.print_stack(file=sys.stdout)
    sys.stdout.flush()


async def _run_peer(args: argparse.Namespace) -> int:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _show_tasks)
    async with _working_peer(args) as peer:
        load = Load(peer, args.name, args.big_size, args.seed)
        load.serve()
        control = Peer(connect=UnixAddress(args.control), identity=args.name)
        _Steering(load).register(control)
        async with control:
            await announce(peer.address)
    return 0


async def _run_relay(args: argparse.Namespace) -> int:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _show_tasks)
    relay = Relay(
        bind=bind_address(args.transport, host=args.bind),
        upstream=connect_address(args.transport, args.upstream),
        identity=args.identity,
        resume_timeout=args.resume_timeout,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
    )
    async with relay:
        await relay.wait_upstream(timeout=WAIT_TIMEOUT)
        await announce(relay.address)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m callosum_like.tools.flaps.node",
        description="One node of the flap load, inside a host of a network test bed.",
    )
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--transport", choices=TRANSPORTS, required=True)
    parser.add_argument("--name", default="node", help="the node's name at the conductor")
    parser.add_argument("--identity", required=True, help="the working peer's identity")
    parser.add_argument("--control", help="the conductor's Unix socket (manager, agent)")
    parser.add_argument("--bind", help="the host address to bind on (manager, relay)")
    parser.add_argument("--connect", help="the address to connect to (agent)")
    parser.add_argument("--upstream", help="the address of the manager (relay)")
    parser.add_argument("--resume-timeout", type=float, required=True)
    parser.add_argument("--heartbeat-interval", type=float, required=True)
    parser.add_argument("--heartbeat-timeout", type=float, required=True)
    parser.add_argument("--big-size", type=int, default=0, help="bytes of a large body")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one node until its stdin closes; the exit status."""
    args = _parser().parse_args(argv)
    ignore_sigint()
    faulthandler.register(signal.SIGUSR1)  # ``kill -USR1`` shows where a node is stuck
    if args.role == "relay":
        return asyncio.run(_run_relay(args))
    return asyncio.run(_run_peer(args))


if __name__ == "__main__":
    raise SystemExit(main())
