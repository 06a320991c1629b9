"""The resumption figures of docs/reliability.md: ``make resume-figures``.

Run as ``python -m callosum_like.tools.flaps.figures [--scale S] [--transport T] [--json
PATH]`` (root: it builds network test beds). Theory of operation: three parts, each on each
transport, each in beds of its own, and each a scenario of ``scenarios``:

1. **Flaps** (``flap_series``): ``100 x scale`` flaps of 1-5 s, of the agents' host and the
   managers' host in turn, while the mixed load runs both ways on a direct path and on a
   path through a relay (small calls, ``--big-mib`` MiB echoes, streams of 100 items). The
   books give failed calls, handlers run twice or never, stream items lost, repeated or out
   of order; the peers give the sessions resumed.
2. **A flap longer than resume_timeout** (``long_flap``), ``3 x scale`` times (at least
   once): 3 calls held each way, the agent's link down until all have failed; the time from
   the flap to each failure beside ``resume_timeout + heartbeat_timeout``.
3. **Loss and delay** (``measure``): for each of ``CONDITIONS``, a fresh bed with that loss
   (on the agent's link, each way) and one-way delay, and ``500 x scale`` small calls then
   ``5 x scale`` uploads (at least one) of ``--big-mib`` MiB from the agent, one at a time.

It prints the three tables (Markdown) and writes everything as JSON (``--json``); the exit
status is 1 when a flap run or a long flap broke a promise (a failed or repeated call, a
stream item lost, a failure other than ``PeerDisconnectedError`` or later than the bound).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from ..child import TRANSPORTS
from ..netbed.bed import NetBed
from .scenarios import FlapPlan, flap_series, long_flap, measure
from .stage import HOSTS, Settings, Stage

__all__ = ["CONDITIONS", "Options", "run_figures", "passed", "format_figures", "main"]

#: Loss (percent, each way on the agent's link) and one-way delay (ms) of each measurement.
CONDITIONS: Final = (
    ("clean", 0.0, 0.0),
    ("1 % loss", 1.0, 0.0),
    ("5 % loss", 5.0, 0.0),
    ("50 ms", 0.0, 50.0),
    ("1 % loss, 50 ms", 1.0, 50.0),
    ("5 % loss, 50 ms", 5.0, 50.0),
)
#: The flap runs: flaps of 1 s or more outlast the heartbeat timeout, and resumption waits
#: far longer than the longest flap and its reconnection.
FLAP_SETTINGS: Final = Settings(resume_timeout=20.0, heartbeat_interval=0.25, heartbeat_timeout=1.0)
#: The long flap: a short resume_timeout.
LONG_SETTINGS: Final = Settings(resume_timeout=2.0, heartbeat_interval=0.25, heartbeat_timeout=1.0)
#: The measurements: the Peer's default heartbeat, and resumption on as in the flap runs.
MEASURE_SETTINGS: Final = Settings(
    resume_timeout=20.0, heartbeat_interval=5.0, heartbeat_timeout=15.0
)
#: Bytes the delay forwarder holds per direction of a connection: with 1 MiB (its default)
#: it, not the peers, would cap a delayed link at about 20 MiB/s.
FORWARDER_BUFFER: Final = 8 * 2**20
#: Calls held each way in a long flap.
HOLDS: Final = 3
#: Slack on the bound of a long flap's failures, in heartbeat intervals: the heartbeat looks
#: once an interval to suspend and once to expire, and the last message heard may have come
#: an interval before the flap.
TICKS: Final = 3
DEFAULT_JSON: Final = "bench/results/resume-figures.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What the figures were asked for (see ``--help``)."""

    scale: float
    transports: tuple[str, ...]
    big_mib: int
    parts: tuple[str, ...]
    seed: int
    json_path: str | None

    def count(self, full: int, least: int = 1) -> int:
        """``full`` scaled, and at least ``least``."""
        return max(least, round(full * self.scale))


async def run_figures(options: Options) -> dict[str, Any]:
    """Run the parts asked for on each transport; return the report."""
    report: dict[str, Any] = {
        "figures": "callosum_like resumption (issue 20, item 4)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "options": asdict(options),
        "host": _host(),
        "settings": {
            "flaps": asdict(FLAP_SETTINGS),
            "long_flap": asdict(LONG_SETTINGS),
            "conditions": asdict(MEASURE_SETTINGS),
        },
    }
    started = time.monotonic()
    for part, run in (("flaps", _flaps), ("long", _long), ("conditions", _conditions)):
        if part in options.parts:
            report[part] = {}
            for transport in options.transports:
                _say(f"{part} over {transport}")
                report[part][transport] = await run(transport, options)
    report["seconds"] = round(time.monotonic() - started)
    report["host"]["load_average_end"] = os.getloadavg()
    report["passed"] = passed(report)
    return report


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def _sized(settings: Settings, options: Options) -> Settings:
    return dataclasses.replace(settings, big_size=options.big_mib * 2**20)


async def _flaps(transport: str, options: Options) -> dict[str, Any]:
    plan = FlapPlan(count=options.count(100), seed=options.seed)
    async with NetBed(HOSTS) as bed, Stage(bed, _sized(FLAP_SETTINGS, options)) as stage:
        paths = [
            await stage.open_path(transport, relayed=False),
            await stage.open_path(transport, relayed=True),
        ]
        result = await flap_series(stage, paths, plan)
    result["plan"] = asdict(plan)
    return result


async def _long(transport: str, options: Options) -> dict[str, Any]:
    runs = []
    async with NetBed(HOSTS) as bed, Stage(bed, _sized(LONG_SETTINGS, options)) as stage:
        path = await stage.open_path(transport, relayed=False)
        for _ in range(options.count(3)):
            runs.append(await long_flap(stage, path, HOLDS))
    seconds = [end[1] for run in runs for end in run["held"].values()]
    outcomes = [end[0] for run in runs for end in run["held"].values()]
    bound = runs[0]["bound"]
    return {
        "runs": runs,
        "pending": len(outcomes),
        "failed_as_disconnected": outcomes.count("PeerDisconnectedError"),
        "other_failures": sum(outcome != "ok" for run in runs for outcome in run["before"])
        + sum(outcome != "ok" for run in runs for outcome in run["after"]),
        "seconds": {
            "min": min(seconds),
            "median": statistics.median(seconds),
            "max": max(seconds),
        },
        "bound": bound,
        "slack": TICKS * LONG_SETTINGS.heartbeat_interval,
        "ran_once": all(set(run["ran"].values()) == {1} for run in runs),
        "cancelled_once": all(set(run["cancelled"].values()) == {1} for run in runs),
    }


async def _conditions(transport: str, options: Options) -> dict[str, Any]:
    results = {}
    for label, loss, delay in CONDITIONS:
        _say(f"  {label}")
        async with NetBed(HOSTS, forwarder_buffer_size=FORWARDER_BUFFER) as bed:
            if delay:
                await bed.delay(delay)  # before the peers connect: their connections are delayed
            if loss:
                await bed.loss(HOSTS[2], loss)
            async with Stage(bed, _sized(MEASURE_SETTINGS, options)) as stage:
                path = await stage.open_path(transport, relayed=False)
                measured = await measure(stage, path, options.count(500, 20), options.count(5))
        results[label] = {"loss_percent": loss, "delay_ms": delay, **measured}
    return results


def passed(report: dict[str, Any]) -> bool:
    """Whether the flap runs and the long flaps of ``report`` kept every promise."""
    flaps_ok = all(
        not result["stalled"] and all(p["verdict"]["passed"] for p in result["paths"].values())
        for result in report.get("flaps", {}).values()
    )
    long_ok = all(
        result["failed_as_disconnected"] == result["pending"]
        and result["other_failures"] == 0
        and result["seconds"]["max"] <= result["bound"] + result["slack"]
        and result["ran_once"]
        and result["cancelled_once"]
        for result in report.get("long", {}).values()
    )
    return flaps_ok and long_ok


def _host() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), ""
            )
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }


# -- the tables -------------------------------------------------------------------------


def format_figures(report: dict[str, Any]) -> str:
    """The report as Markdown tables, one per part."""
    lines = [
        f"callosum_like resumption figures, {report['date']}, {report['seconds']} s; "
        f"{report['host']['cpus']} x {report['host']['cpu']}, Linux {report['host']['kernel']}",
    ]
    if "flaps" in report:
        lines += ["", *_flap_table(report)]
    if "long" in report:
        lines += ["", *_long_table(report)]
    if "conditions" in report:
        lines += ["", *_conditions_table(report)]
    lines += ["", "result: " + ("PASSED" if report["passed"] else "FAILED")]
    return "\n".join(lines)


def _flap_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| path | flaps | calls (small/large/stream) | failed | run twice | never run "
        "| items lost/repeated | out of order | sessions resumed | recovery median/max (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["flaps"].values():
        flaps = (
            len(result["flaps"]) if not result["stalled"] else f"{len(result['flaps'])} (stalled)"
        )
        recovery = result["recovery"]
        for label, path in result["paths"].items():
            verdict = path["verdict"]
            kinds = verdict["by_kind"]
            failed = sum(verdict["failed"].values())
            lines.append(
                f"| {label} | {flaps} | {verdict['calls']:,} ({kinds.get('small', 0):,}/"
                f"{kinds.get('big', 0):,}/{kinds.get('stream', 0):,}) | {failed} "
                f"| {verdict['duplicates']} | {verdict['missing']} "
                f"| {verdict['lost_items']}/{verdict['repeated_items']} "
                f"| {verdict['reordered_streams']} | {path['sessions_resumed']} "
                f"| {_seconds(recovery['median'])}/{_seconds(recovery['longest'])} |"
            )
    return lines


def _long_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| transport | pending calls | failed with PeerDisconnectedError | other calls failed "
        "| time to failure min/median/max (s) | resume_timeout + heartbeat_timeout | "
        "handlers ran once |",
        "|---|---|---|---|---|---|---|",
    ]
    for transport, result in report["long"].items():
        seconds = result["seconds"]
        lines.append(
            f"| {transport} | {result['pending']} | {result['failed_as_disconnected']} "
            f"| {result['other_failures']} | {seconds['min']:.2f}/{seconds['median']:.2f}/"
            f"{seconds['max']:.2f} | {result['bound']:g} "
            f"| {'yes' if result['ran_once'] and result['cancelled_once'] else 'NO'} |"
        )
    return lines


def _conditions_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| transport | link | small call p50 (ms) | p99 (ms) | large upload (MiB/s) | failed |",
        "|---|---|---|---|---|---|",
    ]
    for transport, conditions in report["conditions"].items():
        for label, result in conditions.items():
            rates = result["big_mib_per_s"]
            rate = statistics.median(rates) if rates else float("nan")
            lines.append(
                f"| {transport} | {label} | {result['small_p50_ms']:.2f} "
                f"| {result['small_p99_ms']:.1f} | {rate:.1f} | {result['failed']} |"
            )
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- the command ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m callosum_like.tools.flaps.figures",
        description="The resumption figures of docs/reliability.md (needs root).",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="share of the full run (0.05: a quick one)"
    )
    parser.add_argument("--transport", choices=(*TRANSPORTS, "both"), default="both")
    parser.add_argument("--big-mib", type=int, default=16, help="MiB of a large body")
    parser.add_argument(
        "--part",
        action="append",
        choices=("flaps", "long", "conditions"),
        help="run only this part (again for more; default: all)",
    )
    parser.add_argument("--seed", type=int, default=20, help="seeds the flaps' lengths")
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write the report")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the figures; the exit status (1 when a promise was broken)."""
    args = _parser().parse_args(argv)
    if args.scale <= 0:
        raise SystemExit("--scale must be positive")
    options = Options(
        scale=args.scale,
        transports=TRANSPORTS if args.transport == "both" else (args.transport,),
        big_mib=args.big_mib,
        parts=tuple(args.part or ("flaps", "long", "conditions")),
        seed=args.seed,
        json_path=args.json,
    )
    # SIGTERM as Ctrl-C: the run is cancelled, and its beds are torn down on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        report = asyncio.run(run_figures(options))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(format_figures(report), flush=True)
    if options.json_path:
        Path(options.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json_path).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
