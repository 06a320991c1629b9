"""The ``bench`` command: its options, the run over every step, and the files it writes.

Theory of operation: ``run_bench`` walks ``repeat x systems x workloads``, one fresh server
and client process per step (``steps.run_step``), or for a fleet workload (W6, W7, this
project only) a hub and its agents processes (``fleet_step.run_fleet_step``), with a
``Progress`` bar on stderr; then it prints the tables and targets (``report``) and writes the
JSON (``record``), a Markdown copy of the tables, and the chart (``chart``, W1 to W5). First
it raises its soft limit on open files to the hard limit (``fleet.raise_fd_limit``), which
its children inherit: 10,000 agents need more than the usual 1,024. When a NATS system runs
(``like-nats``, ``raw-nats``), one local ``nats-server`` serves the whole run, and the
children find it through ``child.NATS_URL_VARIABLE``. See the package's docstring for what
is measured.

Only ``__main__`` imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, TextIO

from ..child import NATS_URL_VARIABLE
from ..fleet import raise_fd_limit
from ..nats_server import NATSServer
from .chart import write_chart
from .fleet_step import applies, run_fleet_step
from .record import HostLoad, host_load, json_report
from .report import TARGETS, judge, render_markdown, render_text, tables, target_rows
from .steps import Outcome, Pinning, Summary, run_step, summarize
from .systems import SYSTEM_GROUPS, SYSTEMS, System, with_baseline
from .workloads import (
    FULL_FLEET,
    FULL_WORKLOADS,
    QUICK_FLEET,
    QUICK_WORKLOADS,
    FleetSizes,
    Workload,
    fleet_workloads,
)

__all__ = ["DEFAULT_OUTPUT", "Progress", "add_bench_arguments", "run_bench"]

#: Seconds one step (client start to its result) may take, for a full run and ``--quick``.
STEP_TIMEOUT: Final = 600.0
QUICK_STEP_TIMEOUT: Final = 60.0
DEFAULT_OUTPUT: Final = Path("bench/results/latest.json")


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise.

    Args:
        total: Steps in the run.
        stream: Where to draw (default ``sys.stderr``).
        enabled: False draws nothing.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._total = max(total, 1)
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._done = 0
        self._started = time.monotonic()
        self._tty = self._stream.isatty()

    def step(self, label: str) -> None:
        """Show that the next step, ``label``, is starting."""
        if not self._enabled:
            return
        elapsed = time.monotonic() - self._started
        eta = (
            f", ~{elapsed / self._done * (self._total - self._done):.0f} s left"
            if self._done
            else ""
        )
        filled = 30 * self._done // self._total
        text = f"[{'#' * filled}{'.' * (30 - filled)}] {self._done + 1}/{self._total} {label}{eta}"
        self._stream.write(f"\r{text}\x1b[K" if self._tty else f"bench {text}\n")
        self._stream.flush()
        self._done += 1

    def close(self) -> None:
        """Finish the bar."""
        if self._enabled and self._tty:
            self._stream.write(
                f"\r\x1b[Kbench: {self._total} steps in {time.monotonic() - self._started:.0f} s\n"
            )
            self._stream.flush()


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m callosum_like bench``."""
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny counts")
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        metavar="N",
        help="run every step N times; report medians and spread",
    )
    groups = ", ".join(SYSTEM_GROUPS)
    parser.add_argument(
        "--systems",
        action="append",
        metavar="LIST",
        help=f"comma-separated systems or groups ({groups}); default all: "
        + ", ".join(s.key for s in SYSTEMS),
    )
    parser.add_argument(
        "--workloads",
        action="append",
        metavar="LIST",
        help="comma-separated workloads (W1..W7, or W3-1MiB, W3-16MiB, W6-1k, W6-10k) or "
        "the group 'fleet' (W6 and W7)",
    )
    _add_fleet_arguments(parser)
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the children's event loop (auto: uvloop when installed)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"the JSON results; .md and .png beside it (default {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds one step may take before it counts as failed",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run this project's systems from the source tree DIR (e.g. a 'git archive' "
        "of main), interleaved with ours, as base-zeromq and base-tcp",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run every server on one CPU and every client on another (steadier small-call "
        "figures on a busy or small host; needs two usable CPUs)",
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    full = FULL_FLEET
    parser.add_argument(
        "--fleet-agents",
        type=_counts,
        metavar="LIST",
        help="W6's agent counts, comma-separated (default "
        + ",".join(str(n) for n in full.idle_agents)
        + f"; quick {QUICK_FLEET.idle_agents[0]})",
    )
    parser.add_argument(
        "--fan-out-agents",
        type=_positive,
        metavar="N",
        help=f"W7's agents (default {full.fan_out_agents}; quick {QUICK_FLEET.fan_out_agents})",
    )
    parser.add_argument(
        "--fleet-processes",
        type=_positive,
        metavar="N",
        help=f"processes the agents are spread over (default {full.processes}; "
        f"quick {QUICK_FLEET.processes})",
    )
    parser.add_argument(
        "--idle-seconds",
        type=_seconds,
        metavar="SECONDS",
        help=f"W6's window of idle CPU (default {full.idle_seconds:g}; "
        f"quick {QUICK_FLEET.idle_seconds:g})",
    )


def _fleet_sizes(args: argparse.Namespace) -> FleetSizes:
    """The fleet sizes: the catalogue's, with what the options changed."""
    sizes = QUICK_FLEET if args.quick else FULL_FLEET
    return dataclasses.replace(
        sizes,
        idle_agents=args.fleet_agents or sizes.idle_agents,
        fan_out_agents=args.fan_out_agents or sizes.fan_out_agents,
        processes=args.fleet_processes or sizes.processes,
        idle_seconds=args.idle_seconds or sizes.idle_seconds,
    )


def _counts(text: str) -> tuple[int, ...]:
    counts = tuple(_positive(part) for part in text.split(",") if part.strip())
    if not counts:
        raise argparse.ArgumentTypeError("give at least one count")
    return counts


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _pick(
    choices: list[str] | None, known: Sequence[str], groups: dict[str, tuple[str, ...]]
) -> list[str]:
    """Expand comma-separated names and groups, keeping ``known``'s order.

    Raises:
        ValueError: A name that is neither known nor a group.
    """
    if not choices:
        return list(known)
    wanted: set[str] = set()
    for name in (n.strip() for c in choices for n in c.split(",") if n.strip()):
        matches = groups.get(name) or [k for k in known if k == name or k.split("-")[0] == name]
        if not matches:
            raise ValueError(f"unknown name {name!r}; choose from {', '.join([*groups, *known])}")
        wanted.update(matches)
    return [k for k in known if k in wanted]


def run_bench(args: argparse.Namespace) -> int:
    """``python -m callosum_like bench``: run, print the tables, write JSON, Markdown, chart.

    Returns:
        0 when every step that ran gave figures, 1 when any failed, 2 on bad options.
    """
    plain = QUICK_WORKLOADS if args.quick else FULL_WORKLOADS
    catalogue = (*plain, *fleet_workloads(_fleet_sizes(args)))
    try:
        keys = _pick(args.systems, [s.key for s in SYSTEMS], SYSTEM_GROUPS)
        fleet = {"fleet": tuple(w.key for w in catalogue if w.fleet)}
        workload_keys = _pick(args.workloads, [w.key for w in catalogue], fleet)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    try:
        pin = Pinning.choose() if args.pin else None
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    systems = with_baseline([s for s in SYSTEMS if s.key in keys], args.baseline)
    workloads = [w for w in catalogue if w.key in workload_keys]
    loop = _resolve_loop(args.loop)
    raise_fd_limit()  # before any child starts: they inherit it
    pinned = "" if pin is None else f", servers on CPU {pin.server}, clients on CPU {pin.client}"
    print(
        f"callosum_like bench ({'quick, ' if args.quick else ''}{args.repeat} run(s) per "
        f"step, children on {loop}{pinned}): each step is a fresh server and client process "
        "on 127.0.0.1"
    )
    host_before = host_load()  # other load on the host shows up as spread
    summaries = asyncio.run(_run_all(systems, workloads, args, loop, pin))
    return _report(systems, workloads, summaries, args, loop, host_before, pin)


def _resolve_loop(loop: str) -> str:
    if loop == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return str(loop)


async def _run_all(
    systems: Sequence[System],
    workloads: Sequence[Workload],
    args: argparse.Namespace,
    loop: str,
    pin: Pinning | None = None,
) -> dict[tuple[str, str], Summary]:
    timeout = args.timeout or (QUICK_STEP_TIMEOUT if args.quick else STEP_TIMEOUT)
    missing = {s.key: reason for s in systems if (reason := s.missing()) is not None}
    runnable = [s for s in systems if s.key not in missing]
    outcomes: dict[tuple[str, str], list[Outcome]] = {
        (s.key, w.key): [Outcome(skipped=missing[s.key])] if s.key in missing else []
        for s in systems
        for w in workloads
        if applies(s, w)
    }
    steps = [(s, w) for s in runnable for w in workloads if applies(s, w)]
    progress = Progress(args.repeat * len(steps), enabled=not args.no_progress)
    with _nats_server(any(s.nats for s, _ in steps)):
        for run in range(args.repeat):
            for system, workload in steps:
                progress.step(f"{system.key} {workload.key} (run {run + 1}/{args.repeat})")
                step = run_fleet_step if workload.fleet else run_step
                outcome = await step(system, workload, loop, timeout, pin)
                outcomes[(system.key, workload.key)].append(outcome)
    progress.close()
    return {key: summarize(*key, runs) for key, runs in outcomes.items()}


@contextlib.contextmanager
def _nats_server(needed: bool) -> Iterator[None]:
    """A local nats-server for the NATS systems' children (``NATS_URL_VARIABLE``), if needed."""
    if not needed:
        yield
        return
    with NATSServer(name="bench") as server:
        os.environ[NATS_URL_VARIABLE] = server.url  # the children inherit it
        try:
            yield
        finally:
            del os.environ[NATS_URL_VARIABLE]


def _report(
    systems: Sequence[System],
    workloads: Sequence[Workload],
    summaries: dict[tuple[str, str], Summary],
    args: argparse.Namespace,
    loop: str,
    host_before: HostLoad,
    pin: Pinning | None = None,
) -> int:
    text, markdown = tables(workloads, summaries)
    judged = [judge(t, summaries) for t in TARGETS if (t.system, t.workload) in summaries]
    if judged:
        text += ["", "targets (issues 7, 19, 22 and 24)", *render_text(target_rows(judged), left=3)]
        markdown += ["", "#### Targets", "", *render_markdown(target_rows(judged), left=3)]
    print("\n".join(["", *text, ""]))
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    chart = output.with_suffix(".png")
    compared = [w for w in workloads if not w.fleet]  # the peers have no fleets to compare
    chart_note = (
        "chart skipped (--no-chart)" if args.no_chart else write_chart(compared, summaries, chart)
    )
    report = json_report(systems, workloads, summaries, judged, args, loop, host_before, pin)
    report["chart"] = str(chart) if chart_note.startswith("wrote") else None
    report["fd_limit"] = raise_fd_limit()
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    print(f"wrote {output} and {output.with_suffix('.md')}; {chart_note}")
    failed = [
        s for s in summaries.values() if s.status == "error" or (s.status == "ok" and s.reason)
    ]
    return 1 if failed else 0
