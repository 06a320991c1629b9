"""The bound side of a fleet step (W6, W7): one bound peer that measures itself.

Theory of operation: ``bench-hub`` binds a ``Peer`` on 127.0.0.1 with the default options (the
default heartbeat, 5 s, is what the issue's targets are stated at), notes its own resident
memory and open files after a garbage collection, and prints ``READY <address>``. The parent
(``fleet_step``) then starts the agents processes (``tools.fleet``) pointed at it. The hub
waits until ``workload.agents`` have connected, printing a ``connected N of M`` line every
``PROGRESS_INTERVAL`` (the parent shows the last one if the step fails), leaves the fleet
alone for ``settle_seconds`` (handshakes done, a round of heartbeats both ways), and measures:

* W6 (``idle``): its resident memory (``VmRSS``) and open files again, and the growth
  divided by the agents (``rss_kib_per_agent``, ``fds_per_agent``); then its CPU time, all
  threads (ZeroMQ's I/O thread counts), over ``idle_seconds`` of idleness, as a share of one
  core (``idle_cpu_percent``).
* W7 (``fan_out``): ``invoke_all`` of a 64-byte ``echo`` to every agent, ``warmup`` rounds and
  then ``calls`` rounds one after another, each round timed whole, from the call to the last
  answer (``p50_us``, ``p99_us``: nearest rank), and checked: every agent answered, with the
  body. Its CPU per round too.

Then it prints ``RESULT <json>`` and serves on until its stdin closes, so that the parent can
stop the agents first (a hub that left first would have them all reconnecting).

Only ``__main__`` and the benchmark's modules import this module.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Final

from ...peer import Peer
from ..child import bind_address, ignore_sigint, run_loop, say_ready, wait_for_stdin_eof
from ..fleet import open_fds, raise_fd_limit
from .measure import Metrics, ProcessProbe, latency_figures
from .workloads import Workload

__all__ = ["PROGRESS_INTERVAL", "add_hub_arguments", "run_bench_hub"]

#: Seconds between two ``connected N of M`` lines while the agents connect.
PROGRESS_INTERVAL: Final = 5.0
#: Seconds between two looks at how many agents have connected.
POLL_INTERVAL: Final = 0.1
#: Seconds one ``invoke_all`` round may take before the step is declared broken.
ROUND_TIMEOUT: Final = 120.0
KiB: Final = 1024


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the hidden ``bench-hub``."""
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument("--workload", required=True, help="a Workload as JSON")


def run_bench_hub(args: argparse.Namespace) -> int:
    """``bench-hub``: bind, wait for the agents, measure one fleet workload, print it."""
    ignore_sigint()
    raise_fd_limit()
    workload = Workload(**json.loads(args.workload))
    run_loop(_hub(args.transport, workload), args.loop)
    return 0


async def _hub(transport: str, workload: Workload) -> None:
    probe = ProcessProbe(os.getpid())
    async with Peer(bind=bind_address(transport), identity="bench-hub") as hub:
        gc.collect()
        before = {"rss": probe.rss(), "fds": open_fds()}
        say_ready(hub.address)
        started = time.perf_counter()
        await _wait_for_agents(hub, workload.agents)
        metrics: Metrics = {
            "agents": workload.agents,
            "processes": workload.processes,
            "connect_seconds": time.perf_counter() - started,
        }
        await asyncio.sleep(workload.settle_seconds)
        metrics |= await _MEASURES[workload.kind](hub, workload, probe, before)
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        print("RESULT " + json.dumps({"loop": loop, "metrics": metrics}), flush=True)
        await wait_for_stdin_eof()


async def _wait_for_agents(hub: Peer, count: int) -> None:
    clock = time.monotonic
    reported = clock()
    while (connected := len(hub.peers)) < count:
        if clock() - reported >= PROGRESS_INTERVAL:
            print(f"connected {connected:,} of {count:,}", flush=True)
            reported = clock()
        await asyncio.sleep(POLL_INTERVAL)


async def _idle(
    hub: Peer, workload: Workload, probe: ProcessProbe, before: dict[str, int | None]
) -> Metrics:
    """Memory and open files per agent, then CPU over ``idle_seconds`` of idleness."""
    metrics: Metrics = {}
    rss, fds = probe.rss(), open_fds()
    if rss is not None and before["rss"] is not None:
        metrics["hub_idle_rss_mib"] = before["rss"] / KiB / KiB
        metrics["hub_rss_mib"] = rss / KiB / KiB
        metrics["rss_kib_per_agent"] = (rss - before["rss"]) / KiB / workload.agents
    if fds is not None and before["fds"] is not None:
        metrics["hub_fds"] = fds
        metrics["fds_per_agent"] = (fds - before["fds"]) / workload.agents
    cpu, started = probe.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(workload.idle_seconds)
    cpu_after, seconds = probe.cpu_seconds(), time.perf_counter() - started
    if cpu is not None and cpu_after is not None:
        metrics["idle_cpu_percent"] = (cpu_after - cpu) / seconds * 100
    metrics["idle_seconds"] = seconds
    metrics["connected_after"] = len(hub.peers)
    return metrics


async def _fan_out(
    hub: Peer, workload: Workload, probe: ProcessProbe, before: dict[str, int | None]
) -> Metrics:
    """``invoke_all`` rounds of a 64-byte echo: each round timed whole and checked."""
    body = os.urandom(workload.body_size)
    for number in range(workload.warmup):
        await _round(hub, body, workload.agents, number)
    latencies: list[float] = []
    clock = time.perf_counter
    cpu, started = probe.cpu_seconds(), clock()
    for number in range(workload.calls):
        sent = clock()
        await _round(hub, body, workload.agents, number)
        latencies.append(clock() - sent)
    seconds, cpu_after = clock() - started, probe.cpu_seconds()
    metrics: Metrics = {
        "rounds": workload.calls,
        "seconds": seconds,
        "calls_per_s": workload.calls * workload.agents / seconds,
        **latency_figures(latencies),
    }
    if cpu is not None and cpu_after is not None:
        metrics["cpu_ms_per_round"] = (cpu_after - cpu) / workload.calls * 1000
    return metrics


async def _round(hub: Peer, body: bytes, agents: int, number: int) -> None:
    """One ``invoke_all``; every agent must answer with ``body``.

    Raises:
        RuntimeError: An agent is missing, failed, or answered something else.
    """
    results = await hub.invoke_all("echo", body, timeout=ROUND_TIMEOUT)
    wrong = {name: answer for name, answer in results.items() if answer != body}
    if len(results) != agents or wrong:
        name, answer = next(iter(wrong.items()), ("", None))
        raise RuntimeError(
            f"round {number}: {len(results)} of {agents} agents answered, {len(wrong)} "
            f"wrongly (first: {name} {answer!r:.80})"
        )


_MEASURES: Final[
    dict[str, Callable[[Peer, Workload, ProcessProbe, dict[str, int | None]], Awaitable[Metrics]]]
] = {"idle": _idle, "fan_out": _fan_out}
