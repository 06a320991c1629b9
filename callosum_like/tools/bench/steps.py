"""The parent's side of a step: a fresh server and client process, and what they gave.

Theory of operation: ``run_step`` starts one (system, workload) as a server process and a
client process through ``supervisor.ChildProcess`` (their output is kept for errors, not
shown), pointing their ``PYTHONPATH`` at this tree or the system's ``--baseline`` tree, and
turns the client's ``RESULT`` line into an ``Outcome``; a failure of either process becomes
an ``Outcome`` with the error and the processes' last lines, never an exception. With
``--pin`` every server runs on one CPU and every client on another (``Pinning``: the affinity
is set in the parent around each spawn, so every thread a child starts inherits it).
``summarize`` folds the repeats of one (system, workload) into medians and spread.

Only the benchmark's modules import this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..supervisor import ChildProcess, child_environment
from .measure import Metrics
from .systems import System
from .workloads import Workload

__all__ = ["Pinning", "Outcome", "run_step", "parse_result", "Summary", "summarize"]


@dataclass(frozen=True, slots=True)
class Pinning:
    """The CPUs that ``--pin`` confines every server and every client process to."""

    server: int
    client: int

    @classmethod
    def choose(cls) -> Pinning:
        """The last CPU this process may run on for servers, the one before it for clients.

        Raises:
            RuntimeError: Fewer than two CPUs are usable, or the platform cannot pin.
        """
        if not hasattr(os, "sched_setaffinity"):
            raise RuntimeError("--pin needs os.sched_setaffinity (Linux)")
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            raise RuntimeError(f"--pin needs two usable CPUs, this process has {usable}")
        return cls(server=usable[-1], client=usable[-2])


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What one step gave: figures, a reason it was skipped, or an error."""

    metrics: Metrics | None = None
    skipped: str | None = None
    error: str | None = None
    loop: str = ""
    stream_kind: str = ""


async def run_step(
    system: System, workload: Workload, loop: str, timeout: float, pin: Pinning | None = None
) -> Outcome:
    """Start a server and a client for one (system, workload) and collect the result."""
    argv = [*system.argv("server"), "--loop", loop]
    cpu = None if pin is None else pin.server
    server = _child(f"{system.key} {workload.key} server", argv, system.root, cpu)
    try:
        async with server:
            text = await _client_step(system, workload, loop, timeout, server, pin)
    except (OSError, RuntimeError, TimeoutError) as exc:
        detail = f" (server: {server.tail()})" if server.tail() else ""
        return Outcome(error=f"{type(exc).__name__}: {exc}{detail}"[:500])
    return parse_result(text)


async def _client_step(
    system: System,
    workload: Workload,
    loop: str,
    timeout: float,
    server: ChildProcess,
    pin: Pinning | None = None,
) -> str:
    address = await server.ready()
    argv = [
        *system.argv("client"),
        "--loop",
        loop,
        "--connect",
        address,
        "--server-pid",
        str(server.pid),
        "--workload",
        json.dumps(dataclasses.asdict(workload)),
    ]
    label = f"{system.key} {workload.key} client"
    cpu = None if pin is None else pin.client
    async with _child(label, argv, system.root, cpu) as client:
        try:
            status = await client.wait(timeout)
            if client.result is None:
                raise RuntimeError(f"{label} exited {status} without a result")
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: {client.tail()}") from None
        return client.result


def _child(label: str, argv: Sequence[str], root: str | None, cpu: int | None) -> ChildProcess:
    """A step's process: output kept for errors only, importing ``callosum_like`` from ``root``."""
    env = child_environment(root)
    return ChildProcess(label, argv, relay=False, env=env, cpu=cpu)


def parse_result(text: str) -> Outcome:
    """The ``Outcome`` of a child's ``RESULT`` text: its figures, or why it skipped."""
    report = json.loads(text)
    loop, kind = str(report.get("loop", "")), str(report.get("stream_kind", ""))
    if "skipped" in report:
        return Outcome(skipped=str(report["skipped"]), loop=loop, stream_kind=kind)
    metrics = {str(k): float(v) for k, v in report["metrics"].items()}
    return Outcome(metrics=metrics, loop=loop, stream_kind=kind)


# --- the parent: aggregation ----------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class Summary:
    """All runs of one (system, workload), and their medians and spread."""

    system: str
    workload: str
    status: str = "ok"
    reason: str = ""
    loop: str = ""
    stream_kind: str = ""
    runs: list[Metrics] = field(default_factory=list)
    median: Metrics = field(default_factory=dict)
    low: Metrics = field(default_factory=dict)
    high: Metrics = field(default_factory=dict)

    def spread(self, metric: str) -> float | None:
        """The larger distance from the median to the min or the max, as a fraction."""
        middle = self.median.get(metric)
        if len(self.runs) < 2 or not middle:
            return None
        return max(self.high[metric] - middle, middle - self.low[metric]) / middle


def summarize(system: str, workload: str, outcomes: Sequence[Outcome]) -> Summary:
    """Fold the repeats of one (system, workload) into medians, low and high."""
    runs = [o.metrics for o in outcomes if o.metrics is not None]
    summary = Summary(system=system, workload=workload, runs=runs)
    if outcomes:
        summary.loop, summary.stream_kind = outcomes[0].loop, outcomes[0].stream_kind
    errors = [o.error for o in outcomes if o.error]
    skipped = [o.skipped for o in outcomes if o.skipped]
    if not runs:
        summary.status = "skipped" if skipped else "error"
        summary.reason = (skipped or errors or ["not run"])[0]
        return summary
    if errors:
        summary.reason = f"{len(errors)} of {len(outcomes)} runs failed: {errors[0]}"
    keys = set.intersection(*(set(run) for run in runs))
    for key in sorted(keys):
        values = [run[key] for run in runs]
        summary.median[key] = statistics.median(values)
        summary.low[key], summary.high[key] = min(values), max(values)
    return summary
