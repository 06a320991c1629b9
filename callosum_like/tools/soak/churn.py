"""The churn soak (``python -m callosum_like soak --churn``): a large fleet, always renewing.

Theory of operation: per transport, in turn, one bound ``Peer`` lives in this process (the one
measured, with the default options: a 5 s heartbeat) and ``--agents`` connecting peers live in
``--agent-processes`` child processes (``fleet-agents``, ``tools.fleet``), each of which
replaces ``--churn-fraction`` of its agents every ``--churn-interval`` seconds on its own
clock: the oldest say goodbye and close, as many new ones with new identities connect. Once
every agent has connected, the fleet settles for one interval; then for ``--duration``
seconds this process samples, every ``--churn-interval``, its own resident memory
(``VmRSS``), its open files and the agents connected, a line per sample.

Every connection and disconnection the bound peer reports (``PeerEvent``) is counted, the
disconnections by reason. At the end the agents processes stop, and the bound side must let
go of every link within ``LINKS_GONE_TIMEOUT``.

A transport *passes* when its agents processes ran to the end, the churn happened (at least
half of the replacements due were seen connecting), no link was lost to a missed heartbeat
while churning, every link was let go at the end, memory stayed flat (``judge_flat``: the
highest of the last ``WINDOW`` samples at most ``RSS_TOLERANCE`` above the highest of the
first ``WINDOW``, or of fewer in a run too short for two whole windows; highs, not single
samples, because a sample may fall in the middle of a replacement), and no file was left
open: once the fleet has gone, the bound side holds at most ``FD_SLACK`` more open files
than before it came (within ``FILES_GONE_TIMEOUT``). The samples' open files are shown, not
judged: a sample's count depends on where in a replacement it falls.

Only ``soak.cli`` imports this module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ...events import PeerEvent, PeerEventKind
from ...peer import Peer
from ..child import bind_address
from ..fleet import agents_argv, fd_shortfall, open_fds
from ..supervisor import ChildProcess
from .load import rss_mb

__all__ = [
    "WINDOW",
    "RSS_TOLERANCE",
    "FD_SLACK",
    "ChurnOptions",
    "Sample",
    "churn_soak",
    "judge_flat",
    "format_churn_report",
]

#: Samples at each end of the run whose highs are compared.
WINDOW: Final = 6
#: How much the high of resident memory may grow from the first window to the last.
RSS_TOLERANCE: Final = 0.05
#: Open files the bound side may hold once the fleet has gone beyond those it held before it
#: came (the loop's and libzmq's own may come and go); more is a leak.
FD_SLACK: Final = 16
#: Seconds the bound side gets to close its connections once it let go of every link.
FILES_GONE_TIMEOUT: Final = 10.0
#: Seconds the agents processes get to connect their agents: this much per 1,000, and 20 more.
CONNECT_SECONDS_PER_1000: Final = 30.0
#: Seconds the bound side gets to let go of every link once the agents stopped: its default
#: heartbeat timeout (15 s: an agent killed without a goodbye) and 10 s more.
LINKS_GONE_TIMEOUT: Final = 25.0
#: The disconnection reason that fails the soak: the bound side missed an agent's traffic.
HEARTBEAT_LOST: Final = "heartbeat lost"
#: Seconds between two looks at the agents processes while waiting.
POLL_INTERVAL: Final = 0.5


@dataclass(frozen=True, kw_only=True, slots=True)
class ChurnOptions:
    """What the churn soak was asked to do (see ``soak --help``)."""

    transports: tuple[str, ...]
    agents: int
    processes: int
    interval: float
    fraction: float
    duration: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Sample:
    """One look at the bound side: seconds into the run, memory (MiB), open files, agents."""

    at: float
    rss_mib: float
    fds: int
    connected: int


@dataclass(kw_only=True)
class _Events:
    """What the bound peer reported: connections, disconnections by reason, none left."""

    peers: Callable[[], frozenset[str]]
    connected: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    at_the_end: collections.Counter[str] = field(default_factory=collections.Counter)
    ending: bool = False  # the agents processes are being stopped
    all_gone: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, event: PeerEvent) -> None:
        if event.kind is PeerEventKind.CONNECTED:
            self.connected += 1
            self.all_gone.clear()
            return
        reason = event.reason.split(" (", 1)[0]  # "the remote closed (closing)"
        (self.at_the_end if self.ending else self.reasons)[reason] += 1
        if not self.peers():
            self.all_gone.set()


async def churn_soak(options: ChurnOptions) -> dict[str, Any]:
    """Run the churn soak on each transport in turn; return the report."""
    report: dict[str, Any] = {"options": dataclasses.asdict(options), "transports": {}}
    for transport in options.transports:
        print(f"churn soak over {transport}: connecting {options.agents:,} agents", flush=True)
        report["transports"][transport] = await _one_transport(transport, options)
    report["passed"] = all(r["passed"] for r in report["transports"].values())
    return report


def _shares(agents: int, processes: int) -> list[int]:
    """``agents`` shared out over ``processes`` as evenly as they go (none empty)."""
    processes = max(1, min(processes, agents))
    base, extra = divmod(agents, processes)
    return [base + (index < extra) for index in range(processes)]


async def _one_transport(transport: str, options: ChurnOptions) -> dict[str, Any]:
    counts = _shares(options.agents, options.processes)
    shortfall = fd_shortfall(transport, max(counts), options.agents)
    if shortfall is not None:
        return {"passed": False, "error": shortfall}
    bound = Peer(bind=bind_address(transport), identity="churn-hub")
    events = _Events(peers=lambda: bound.peers)
    bound.add_event_listener(events)
    async with bound:
        fds_before = open_fds() or 0
        try:
            result = await _with_agents(bound, transport, counts, options, events)
        except (OSError, RuntimeError, TimeoutError) as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"[:600]}
        result["links_left"] = await _links_gone(bound, events)
        result["fds_before"] = fds_before
        result["fds_after"] = fds_after = await _files_released(fds_before)
        result["fds_flat"] = fds_after <= fds_before + FD_SLACK
    result["connections"] = events.connected
    result["disconnections"] = dict(events.reasons)
    result["disconnections_at_the_end"] = dict(events.at_the_end)
    result["passed"] = _passed(result)
    return result


async def _with_agents(
    bound: Peer, transport: str, counts: list[int], options: ChurnOptions, events: _Events
) -> dict[str, Any]:
    """Start the agents, wait for them all, sample for the duration, stop them.

    Raises:
        RuntimeError: An agents process exited (it says why in its output, relayed).
        TimeoutError: The agents did not all connect in time.
    """
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        children: list[ChildProcess] = []
        for index, count in enumerate(counts):
            argv = agents_argv(
                transport,
                bound.address,
                count,
                f"churn-{index}-",
                churn_interval=options.interval,
                churn_fraction=options.fraction,
            )
            child = ChildProcess(f"{transport} agents {index}", argv)
            children.append(await stack.enter_async_context(child))
        budget = CONNECT_SECONDS_PER_1000 * max(counts) / 1000 + 20
        for child in children:
            await child.ready(timeout=budget)
        connect_seconds = time.monotonic() - started
        await _watch(children, options.interval)  # the first replacements come and go
        connected_before = events.connected
        samples = await _sample(bound, options, children)
        replaced = events.connected - connected_before
        events.ending = True
    due = sum(max(1, round(count * options.fraction)) for count in counts)
    return {
        "connect_seconds": round(connect_seconds, 1),
        "samples": [dataclasses.asdict(sample) for sample in samples],
        "replaced": replaced,
        "replacements_due": due * int(options.duration // options.interval),
        **judge_flat(samples),
    }


async def _watch(children: Sequence[ChildProcess], seconds: float) -> None:
    """Wait ``seconds``, checking that every agents process still runs.

    Raises:
        RuntimeError: One exited.
    """
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for child in children:
            if child.returncode is not None:
                raise RuntimeError(f"{child.label} exited {child.returncode}: {child.tail()}")
        await asyncio.sleep(min(POLL_INTERVAL, left))


async def _sample(
    bound: Peer, options: ChurnOptions, children: Sequence[ChildProcess]
) -> list[Sample]:
    """A ``Sample`` every ``options.interval`` for ``options.duration``, a line each."""
    samples: list[Sample] = []
    started = time.monotonic()
    while True:
        gc.collect()
        sample = Sample(
            at=round(time.monotonic() - started, 1),
            rss_mib=round(rss_mb(), 2),
            fds=open_fds() or 0,
            connected=len(bound.peers),
        )
        samples.append(sample)
        print(
            f"{time.strftime('%H:%M:%S')} +{sample.at:.0f} s: RSS {sample.rss_mib:.1f} MiB, "
            f"{sample.fds:,} open files, {sample.connected:,} agents connected",
            flush=True,
        )
        if sample.at >= options.duration:
            return samples
        await _watch(children, started + len(samples) * options.interval - time.monotonic())


async def _links_gone(bound: Peer, events: _Events) -> int:
    """Wait for the bound side to let go of every link; return how many it still holds."""
    if bound.peers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(events.all_gone.wait(), LINKS_GONE_TIMEOUT)
    return len(bound.peers)


async def _files_released(before: int) -> int:
    """Open files once the bound side has closed what it can, waiting for it if need be."""
    for _ in range(int(FILES_GONE_TIMEOUT / POLL_INTERVAL)):
        if (open_fds() or 0) <= before + FD_SLACK:
            break
        await asyncio.sleep(POLL_INTERVAL)
    return open_fds() or 0


def judge_flat(samples: Sequence[Sample]) -> dict[str, Any]:
    """Whether memory stayed flat: the last window's high against the first's.

    Returns:
        The highs, the growth and ``rss_flat`` (False with fewer than two samples), and the
        median open files of each window, for the record.
    """
    window = min(WINDOW, len(samples) // 2)
    if window < 1:
        return {"rss_flat": False}
    first, last = samples[:window], samples[-window:]
    rss = max(s.rss_mib for s in first), max(s.rss_mib for s in last)
    return {
        "rss_high_first_mib": rss[0],
        "rss_high_last_mib": rss[1],
        "rss_growth_percent": round((rss[1] - rss[0]) / rss[0] * 100, 2),
        "rss_flat": rss[1] <= rss[0] * (1 + RSS_TOLERANCE),
        "fds_median_first": statistics.median(s.fds for s in first),
        "fds_median_last": statistics.median(s.fds for s in last),
    }


def _passed(result: dict[str, Any]) -> bool:
    return (
        "error" not in result
        and result["replaced"] * 2 >= result["replacements_due"]
        and HEARTBEAT_LOST not in result["disconnections"]
        and result["links_left"] == 0
        and result["rss_flat"]
        and result["fds_flat"]
    )


def format_churn_report(report: dict[str, Any]) -> str:
    """The report as text, one fact per line."""
    options = report["options"]
    lines = [
        f"callosum_like churn soak: {options['agents']:,} agents in {options['processes']} "
        f"processes, {options['fraction']:.0%} replaced every {options['interval']:g} s, "
        f"{options['duration']:g} s per transport"
    ]
    for transport, result in report["transports"].items():
        lines += [f"{transport}: {'PASSED' if result['passed'] else 'FAILED'}"]
        if "error" in result:
            lines.append(f"  error: {result['error']}")
        if "rss_high_first_mib" in result:
            lines += [
                f"  connected in {result['connect_seconds']:.1f} s; replaced "
                f"{result['replaced']:,} (due {result['replacements_due']:,})",
                f"  bound-side RSS high {result['rss_high_first_mib']:.1f} MiB at the start, "
                f"{result['rss_high_last_mib']:.1f} at the end "
                f"({result['rss_growth_percent']:+.1f} %)",
                f"  open files while churning (medians): {result['fds_median_first']:,.0f} at "
                f"the start, {result['fds_median_last']:,.0f} at the end",
            ]
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(result["disconnections"].items()))
        ending = ", ".join(
            f"{k} {v:,}" for k, v in sorted(result["disconnections_at_the_end"].items())
        )
        lines += [
            f"  connections {result['connections']:,}; disconnections while churning: "
            f"{reasons or 'none'}",
            f"  when the agents stopped: disconnections {ending or 'none'}, "
            f"links left {result['links_left']}",
            f"  open files {result['fds_before']:,} before the fleet, {result['fds_after']:,} "
            f"after it left",
        ]
    lines.append("result: " + ("PASSED" if report["passed"] else "FAILED"))
    return "\n".join(lines)
