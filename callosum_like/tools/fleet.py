"""A fleet: many connecting peers in one process, the agents of ``bench`` W6/W7 and the churn soak.

Theory of operation: the hidden subcommand ``fleet-agents`` (``run_agents``) opens ``--count``
full ``Peer(connect=...)`` objects to one bound peer, each with an identity of its own
(``<prefix><number>``, numbers counting up for the life of the process) and an ``echo``
handler. At most ``--concurrency`` handshakes are under way at once: the bound side's listen
backlog is finite, and a burst of thousands of SYNs would only earn retries a second apart.
Once all are open it prints ``READY <count>`` (``child.say_ready``) and holds them, idle but for
their heartbeats (the defaults: the fleet is measured as users would run it), until its stdin
closes; then it closes them all and exits 0.

With ``--churn-interval`` it also *replaces* ``--churn-fraction`` of them every interval, on a
fixed schedule: the oldest close (each says goodbye), as many new ones with new identities
open, and a ``CHURN ...`` line says how many and how long it took. A replacement under way
when stdin closes is finished first, so that every agent that leaves has had its handshake.

A peer that cannot open (ZeroMQ out of sockets, the limit on open files, a handshake that
timed out) ends the process with a ``FAILED ...`` line naming how many were open and why,
and exit status 1: the parent turns that into a failure row, never a crash.

``raise_fd_limit`` lifts the process's soft limit on open files (``RLIMIT_NOFILE``) to its
hard limit; ``FDS_PER_AGENT`` and ``fd_shortfall`` say beforehand whether a process can hold
what it is asked to. ``open_fds`` counts a process's open files from ``/proc``.

Only the tools import this module (``bench`` and ``soak`` both start these processes).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import time
from collections.abc import Awaitable, Iterable
from typing import Final

from ..peer import Peer
from ..request import Body, Request
from .child import (
    TRANSPORTS,
    connect_address,
    ignore_sigint,
    run_loop,
    say_ready,
    wait_for_stdin_eof,
)
from .supervisor import subcommand

__all__ = [
    "FDS_PER_AGENT",
    "SPARE_FDS",
    "DEFAULT_CONCURRENCY",
    "Fleet",
    "FleetError",
    "raise_fd_limit",
    "fd_shortfall",
    "open_fds",
    "agents_argv",
    "add_agents_arguments",
    "run_agents",
]

#: Open files one connecting peer holds, by transport: TCP its socket; ZeroMQ its socket's
#: connection plus a mailbox (an eventfd in libzmq) for each of its three sockets: the
#: DEALER and the two ends of its monitor.
FDS_PER_AGENT: Final = {"tcp": 1, "zeromq": 4}
#: Open files a process needs beside its peers: the interpreter, the loop, pipes, libzmq.
SPARE_FDS: Final = 64
#: Handshakes under way at once in one agents process.
DEFAULT_CONCURRENCY: Final = 32
#: Seconds one agent's handshake may take: generous, a loaded host answers thousands late.
AGENT_CONNECT_TIMEOUT: Final = 60.0


class FleetError(Exception):
    """A peer of the fleet could not open; ``opened`` were open at that moment."""

    def __init__(self, opened: int, cause: BaseException) -> None:
        super().__init__(opened, cause)
        self.opened = opened
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.opened} agents open, then {type(self.cause).__name__}: {self.cause}"


async def _echo(request: Request) -> Body:
    return request.body


class Fleet:
    """Connecting peers to one address, opened and closed in bounded batches.

    Args:
        transport: ``zeromq`` or ``tcp``.
        address: The bound peer's address as it reported it.
        prefix: The start of every identity; a number counting up follows it.
        concurrency: Handshakes (and closes) under way at once.
    """

    def __init__(
        self, transport: str, address: str, prefix: str, concurrency: int = DEFAULT_CONCURRENCY
    ) -> None:
        self._address = connect_address(transport, address)
        self._prefix = prefix
        self._gate = asyncio.Semaphore(concurrency)
        self._peers: collections.deque[Peer] = collections.deque()
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._peers)

    async def grow(self, count: int) -> None:
        """Open ``count`` more peers.

        Raises:
            FleetError: One could not open; those that did stay open (``aclose`` closes them).
        """
        outcomes = await asyncio.gather(
            *(self._open(next(self._numbers)) for _ in range(count)), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise FleetError(len(self._peers), outcome)

    async def shrink(self, count: int) -> None:
        """Close the ``count`` oldest peers."""
        leaving = [self._peers.popleft() for _ in range(min(count, len(self._peers)))]
        await self._bounded(peer.aclose() for peer in leaving)

    async def aclose(self) -> None:
        """Close every peer. Cancellation: the closing goes on (shielded) all the same."""
        await asyncio.shield(self.shrink(len(self._peers)))

    async def _open(self, number: int) -> None:
        peer = Peer(
            connect=self._address,
            identity=f"{self._prefix}{number}",
            connect_timeout=AGENT_CONNECT_TIMEOUT,
        )
        peer.handle_function("echo", _echo)
        async with self._gate:
            await peer.__aenter__()
        self._peers.append(peer)

    async def _bounded(self, steps: Iterable[Awaitable[None]]) -> None:
        async def one(step: Awaitable[None]) -> None:
            async with self._gate:
                await step

        await asyncio.gather(*(one(step) for step in steps))


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new limit.

    Children inherit it. Where ``resource`` does not exist (Windows) nothing changes and the
    return value is 0.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux or macOS
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


def fd_shortfall(transport: str, agents_per_process: int, bound_agents: int) -> str | None:
    """Why a process of a fleet this size would run out of open files, or ``None``.

    Args:
        transport: ``zeromq`` or ``tcp``.
        agents_per_process: Connecting peers in the largest agents process.
        bound_agents: Remotes of the bound peer.
    """
    limit = raise_fd_limit()
    if limit <= 0:
        return None
    need = max(agents_per_process * FDS_PER_AGENT[transport], bound_agents) + SPARE_FDS
    if need <= limit:
        return None
    return (
        f"needs about {need:,} open files in one process, the hard limit is {limit:,}: "
        "raise it (ulimit -Hn as root, or /etc/security/limits.conf) and run again"
    )


def open_fds(pid: int | str = "self") -> int | None:
    """How many files a process has open (``None`` where ``/proc`` cannot tell)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def agents_argv(
    transport: str,
    address: str,
    count: int,
    prefix: str,
    *,
    churn_interval: float = 0.0,
    churn_fraction: float = 0.0,
    loop: str = "auto",
) -> list[str]:
    """The command line of a ``fleet-agents`` process."""
    argv = ["fleet-agents", "--transport", transport, "--connect", address, "--count", str(count)]
    argv += ["--prefix", prefix, "--loop", loop]
    if churn_interval > 0:
        argv += ["--churn-interval", str(churn_interval), "--churn-fraction", str(churn_fraction)]
    return subcommand(*argv)


def add_agents_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the hidden ``fleet-agents``."""
    parser.add_argument("--transport", choices=TRANSPORTS, required=True)
    parser.add_argument("--connect", required=True, help="the address the bound peer printed")
    parser.add_argument("--count", type=int, required=True, help="agents to hold open")
    parser.add_argument("--prefix", default="agent-", help="the start of every identity")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--churn-interval", type=float, default=0.0, help="seconds; 0: none")
    parser.add_argument("--churn-fraction", type=float, default=0.1)
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")


def run_agents(args: argparse.Namespace) -> int:
    """The ``fleet-agents`` subcommand; the exit status is 1 when an agent could not open."""
    ignore_sigint()
    raise_fd_limit()
    return run_loop(_agents(args), args.loop)


async def _agents(args: argparse.Namespace) -> int:
    fleet = Fleet(args.transport, args.connect, args.prefix, args.concurrency)
    try:
        await fleet.grow(args.count)
        say_ready(str(len(fleet)))
        await _hold(fleet, args)
    except FleetError as failed:
        print(f"FAILED {failed}", flush=True)
        return 1
    finally:
        await fleet.aclose()
    return 0


async def _hold(fleet: Fleet, args: argparse.Namespace) -> None:
    """Hold the fleet (churning it, if asked) until stdin closes.

    A replacement under way when stdin closes is finished first: the agents that leave then
    have all had their handshake, and each says goodbye.

    Raises:
        FleetError: A replacement agent could not open.
    """
    if args.churn_interval <= 0:
        await wait_for_stdin_eof()
        return
    stopping = asyncio.Event()
    eof = asyncio.ensure_future(wait_for_stdin_eof())
    churning = asyncio.ensure_future(_churn(fleet, args, stopping))
    try:
        await asyncio.wait({eof, churning}, return_when=asyncio.FIRST_COMPLETED)
        stopping.set()
        await churning
    finally:
        for task in (eof, churning):
            task.cancel()
        await asyncio.gather(eof, churning, return_exceptions=True)


async def _churn(fleet: Fleet, args: argparse.Namespace, stopping: asyncio.Event) -> None:
    """Every ``churn_interval`` s, replace ``churn_fraction`` of the fleet, on a fixed clock.

    Returns once ``stopping`` is set, between two replacements.
    """
    loop = asyncio.get_running_loop()
    count = max(1, round(len(fleet) * args.churn_fraction))
    due = loop.time()
    while True:
        due += args.churn_interval
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(due):
                await stopping.wait()
        if stopping.is_set():
            return
        started = time.perf_counter()
        await fleet.shrink(count)
        await fleet.grow(count)
        print(
            f"CHURN {count} replaced in {time.perf_counter() - started:.2f} s, {len(fleet)} open",
            flush=True,
        )
