"""The benchmark's JSON record: the results with versions, host facts and the host's load.

Theory of operation: ``json_report`` gathers what a reader needs to trust or reproduce a run:
the options, the versions of every package involved, the host (CPU model and count, memory,
OS) and its load average and hypervisor steal over the run (``HostLoad``: taken before and
compared at the end), the workloads, every summary and every judged target.

Only the benchmark's modules import this module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq

from .report import Judged
from .steps import Pinning, Summary
from .systems import REFERENCE, System
from .workloads import Workload

__all__ = ["HostLoad", "host_load", "json_report"]


def json_report(
    systems: Sequence[System],
    workloads: Sequence[Workload],
    summaries: dict[tuple[str, str], Summary],
    judged: Sequence[Judged],
    args: argparse.Namespace,
    loop: str,
    host_before: HostLoad,
    pin: Pinning | None = None,
) -> dict[str, object]:
    """The run as the JSON document ``bench`` writes (see ``docs/performance.md``)."""
    return {
        "benchmark": "callosum_like bench (issue 7)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "repeat": args.repeat,
        "loop": loop,
        "pinned": None if pin is None else dataclasses.asdict(pin),
        "reference": REFERENCE,
        "versions": _versions(systems),
        "host": {**_host(), **host_before.until_now()},
        "systems": [
            {"key": s.key, "label": s.label, "streams": s.streams, "skipped": s.missing()}
            for s in systems
        ],
        "workloads": [dataclasses.asdict(w) for w in workloads],
        "results": [dataclasses.asdict(s) for s in summaries.values()],
        "targets": [dataclasses.asdict(j) for j in judged],
    }


def _versions(systems: Sequence[System]) -> dict[str, str]:
    versions = {"python": platform.python_version(), "libzmq": zmq.zmq_version()}
    dists = ["callosum-like", "pyzmq", "msgpack", "aiojobs", "cramjam", "uvloop", "matplotlib"]
    for dist in [*dists, *(d for s in systems for d in s.dists)]:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


@dataclass(frozen=True, slots=True)
class HostLoad:
    """The host's load average and CPU time counters at one moment (Linux ``/proc/stat``)."""

    load_average: list[float] | None
    cpu_ticks: list[int] | None

    def until_now(self) -> dict[str, object]:
        """Load averages then and now, and the share of CPU time stolen by the hypervisor."""
        now = host_load()
        steal = None
        if self.cpu_ticks is not None and now.cpu_ticks is not None:
            spent = [b - a for a, b in zip(self.cpu_ticks, now.cpu_ticks, strict=True)]
            steal = round(100 * spent[7] / max(sum(spent), 1), 1)  # the 8th field: steal
        return {
            "load_average_before": self.load_average,
            "load_average_after": now.load_average,
            "cpu_steal_percent": steal,
        }


def host_load() -> HostLoad:
    """The host's load average and CPU time counters now (``None`` where unknown)."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        ticks: list[int] | None = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    except (OSError, ValueError):
        ticks = None
    return HostLoad(load, ticks)


def _host() -> dict[str, object]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**30
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "machine": platform.machine(),
    }
