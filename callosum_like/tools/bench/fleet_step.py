"""The parent's side of a fleet step (W6, W7): a hub process, and agents processes around it.

Theory of operation: ``run_fleet_step`` starts the hub (``bench-hub``: the bound side, which
measures itself, see ``hub``), waits for its ``READY <address>``, starts ``workload.processes``
agents processes (``fleet-agents``, ``tools.fleet``; the agents shared out as evenly as they
go, each process with identities of its own) pointed at it, and waits for the hub's ``RESULT``
line, watching that no process exits meanwhile: an agents process that could not open its
agents says why in a ``FAILED`` line (ZeroMQ out of sockets, the limit on open files), and
that line becomes the step's error. Then it stops the agents, then the hub. Every failure is
an ``Outcome`` with the error and the processes' last lines, never an exception. A fleet that
would not fit under the limit on open files (``fleet.fd_shortfall``, after raising the soft
limit to the hard one) fails before anything starts, with the reason and what to do.

Fleet workloads run on this project's systems only (``applies``): the peers have no fleet.

Only the benchmark's modules import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Sequence
from typing import Final

from ..child import TRANSPORTS
from ..fleet import agents_argv, fd_shortfall
from ..supervisor import ChildProcess, child_environment, subcommand
from .steps import Outcome, Pinning, parse_result
from .systems import System
from .workloads import Workload

__all__ = ["POLL_INTERVAL", "applies", "shares", "run_fleet_step"]

#: Seconds between two looks at the hub's result and at the processes still running.
POLL_INTERVAL: Final = 0.2


def applies(system: System, workload: Workload) -> bool:
    """Whether ``workload`` runs on ``system``: fleets need this project's ``Peer``.

    Not over NATS: the fleet's agent processes speak ZeroMQ and TCP. Nor bodies over what
    the system can carry at all (raw NATS: one message of ``max_payload``).
    """
    limit = system.max_body_size
    if limit is not None and max(workload.body_size, workload.big_size) > limit:
        return False
    return not workload.fleet or (system.script is None and not system.nats)


def shares(agents: int, processes: int) -> list[int]:
    """``agents`` shared out over ``processes`` as evenly as they go (none empty)."""
    processes = max(1, min(processes, agents))
    base, extra = divmod(agents, processes)
    return [base + (index < extra) for index in range(processes)]


async def run_fleet_step(
    system: System, workload: Workload, loop: str, timeout: float, pin: Pinning | None = None
) -> Outcome:
    """Run one fleet workload on one of this project's transports; collect the hub's figures."""
    if system.transport not in TRANSPORTS:
        return Outcome(skipped=f"fleets run over {' and '.join(TRANSPORTS)} only")
    counts = shares(workload.agents, workload.processes)
    shortfall = fd_shortfall(system.transport, max(counts), workload.agents)
    if shortfall is not None:
        return Outcome(error=shortfall)
    env = child_environment(system.root)
    argv = subcommand("bench-hub", "--transport", system.transport, "--loop", loop)
    argv += ["--workload", json.dumps(dataclasses.asdict(workload))]
    cpu = None if pin is None else pin.server
    hub = ChildProcess("hub", argv, relay=False, env=env, cpu=cpu)  # the row names the step
    children: list[ChildProcess] = [hub]
    try:
        async with hub, contextlib.AsyncExitStack() as agents:
            address = await hub.ready()
            for index, count in enumerate(counts):
                argv = agents_argv(system.transport, address, count, f"agent-{index}-", loop=loop)
                cpu = None if pin is None else pin.client
                child = ChildProcess(f"agents {index}", argv, relay=False, env=env, cpu=cpu)
                children.append(await agents.enter_async_context(child))
            text = await _result(hub, children, timeout)
    except (OSError, RuntimeError, TimeoutError) as exc:
        return Outcome(error=f"{type(exc).__name__}: {exc}{_tails(children)}"[:600])
    return parse_result(text)


async def _result(hub: ChildProcess, children: Sequence[ChildProcess], timeout: float) -> str:
    """The hub's ``RESULT`` text, once it prints it.

    Raises:
        RuntimeError: A process exited first.
        TimeoutError: No result within ``timeout`` seconds.
    """
    async with asyncio.timeout(timeout):
        while hub.result is None:
            for child in children:
                if child.returncode is not None:
                    raise RuntimeError(f"{child.label} exited {child.returncode}")
            await asyncio.sleep(POLL_INTERVAL)
        return hub.result


def _tails(children: Sequence[ChildProcess]) -> str:
    """The last lines of every process that said something, each text once, for an error."""
    said: dict[str, list[str]] = {}
    for child in children:
        if text := child.tail():
            said.setdefault(text, []).append(child.label)
    return "".join(f" ({', '.join(labels)}: {text})" for text, labels in said.items())
