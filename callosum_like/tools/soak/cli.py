"""The ``soak`` command: the whole run, its report, and its options.

Theory of operation: see the package's docstring (``callosum_like.tools.soak``). ``soak``
starts a ``load.Site`` per transport, floods each, runs the mixed load and the killers for
the rest of ``--duration``, stops the load (a task that does not stop within
``LOAD_STOP_TIMEOUT``, or that crashed, fails the soak), checks that every server still
answers, and returns the report that ``format_report`` prints. With ``--churn`` it runs the
churn soak instead (``churn``): a fleet of ``--agents`` connecting peers, a share of them
replaced every ``--churn-interval``, the bound side's memory and open files watched. With
``--network`` it runs the network soak (``network``): the load between processes in a
network test bed while the links flap, with resumption on; nothing may fail.

Only ``__main__`` imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Final

from ..child import TRANSPORTS
from ..fleet import raise_fd_limit
from .churn import ChurnOptions, churn_soak, format_churn_report
from .load import CALL_TIMEOUT, Site, churn, flood, killer, rss_mb, worker
from .network import NetworkOptions, format_network_report, network_soak
from .tally import Tally

__all__ = [
    "DEFAULT_DURATION",
    "Options",
    "soak",
    "format_report",
    "run_soak",
    "add_soak_arguments",
]

#: Seconds a soak runs by default (``make soak``; ``SOAK_DURATION=...`` changes it).
DEFAULT_DURATION: Final = 300.0
#: Seconds between two kills of one server.
DEFAULT_KILL_INTERVAL: Final = 30.0
#: Long-lived clients per transport.
DEFAULT_CLIENTS: Final = 4
#: Calls of the flood phase, per transport.
DEFAULT_FLOOD: Final = 100_000
#: Seconds the load gets to stop at the end.
LOAD_STOP_TIMEOUT: Final = 30.0
#: The churn soak: agents, the processes they live in, and a tenth replaced every 10 s.
DEFAULT_AGENTS: Final = 10_000
DEFAULT_AGENT_PROCESSES: Final = 4
DEFAULT_CHURN_INTERVAL: Final = 10.0
DEFAULT_CHURN_FRACTION: Final = 0.1
#: The network soak: each flap keeps a link down for 1 to 5 s.
DEFAULT_FLAP_SHORTEST: Final = 1.0
DEFAULT_FLAP_LONGEST: Final = 5.0


@dataclass
class Options:
    """What ``soak`` was asked to do."""

    duration: float
    transports: tuple[str, ...]
    kill_interval: float
    clients: int
    flood: int
    json_path: str | None = None


async def soak(options: Options) -> dict[str, Any]:
    """Run the soak; return the report (see ``format_report``)."""
    tally = Tally()
    sites = [Site(transport, tally) for transport in options.transports]
    started = time.monotonic()
    for site in sites:
        await site.start_server()
    report: dict[str, Any] = {"options": options.__dict__, "client_rss_start": rss_mb()}
    async with contextlib.AsyncExitStack() as clients:
        floods = await asyncio.gather(*(flood(site, options.flood) for site in sites))
        report["flood"] = dict(zip(options.transports, floods, strict=True))
        report["client_rss_warm"] = rss_mb()  # after the flood's thousands of tasks
        stop = asyncio.Event()
        tasks = await _start_load(sites, options, clients, stop)
        remaining = options.duration - (time.monotonic() - started)
        await asyncio.sleep(max(remaining, 0))
        stop.set()
        await _finish(tasks, tally)
        report["last_calls_ok"] = await _final_check(sites, clients)
    report["client_rss_end"] = rss_mb()
    report["server_rss_end"] = {site.transport: await site.stop_server() for site in sites}
    report["server_rss_lives"] = {site.transport: site.server_rss for site in sites}
    report["kills"] = {site.transport: site.kills for site in sites}
    report["elapsed"] = time.monotonic() - started
    report["ok"] = dict(tally.ok)
    report["failures"] = dict(tally.failures)
    report["unexpected"] = dict(tally.unexpected)
    report["refused"] = tally.refused
    report["passed"] = not tally.unexpected and report["last_calls_ok"]
    return report


async def _start_load(
    sites: list[Site], options: Options, clients: contextlib.AsyncExitStack, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    tasks = []
    for index, site in enumerate(sites):
        for number in range(options.clients):
            client = await clients.enter_async_context(
                site.client(f"soak-{site.transport}-{number}")
            )
            tasks.append(asyncio.create_task(worker(site, client, number, stop)))
        tasks.append(asyncio.create_task(churn(site, stop)))
        offset = options.kill_interval * (1 + index / max(len(sites), 1) / 2)
        tasks.append(asyncio.create_task(killer(site, options.kill_interval, offset, stop)))
    return tasks


async def _finish(tasks: list[asyncio.Task[None]], tally: Tally) -> None:
    """Wait for the load to stop; a task that does not, or that crashed, fails the soak."""
    done, stuck = await asyncio.wait(tasks, timeout=LOAD_STOP_TIMEOUT)
    for task in stuck:
        tally.unexpected["StuckTask"] += 1
        print(f"still running {LOAD_STOP_TIMEOUT:.0f} s after the end: {task!r}", flush=True)
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            tally.unexpected[f"crashed: {type(task.exception()).__name__}"] += 1
            print(f"a task of the soak crashed: {task.exception()!r}", flush=True)


async def _final_check(sites: list[Site], clients: contextlib.AsyncExitStack) -> bool:
    """After the last restart, every transport still answers, and its statistics say so."""
    for site in sites:
        client = await clients.enter_async_context(site.client(f"check-{site.transport}"))
        stats = await client.invoke("stats", timeout=CALL_TIMEOUT)
        if not isinstance(stats, dict) or stats.get("connected_peers", 0) < 1:
            return False
    return True


def format_report(report: dict[str, Any]) -> str:
    """The report as text, one fact per line."""
    options = report["options"]
    ok = report["ok"]
    lines = [
        f"callosum_like soak: {report['elapsed']:.0f} s, {'+'.join(options['transports'])}, "
        f"{options['clients']} clients per transport, server killed every "
        f"{options['kill_interval']:.0f} s",
    ]
    for transport, memory in report["flood"].items():
        lines.append(
            f"flood ({transport}): server RSS {memory['before']:.1f} MiB before, "
            f"{memory['peak']:.1f} peak, {memory['after']:.1f} after"
        )
    lines.append(
        f"flood calls: {options['flood'] * len(options['transports'])}, of which "
        f"{report['refused']} refused at once with OverloadedError (expected)"
    )
    details = ", ".join(f"{kind} {count}" for kind, count in sorted(ok.items()))
    lines.append(f"calls made: {sum(ok.values())} succeeded ({details})")
    failures = ", ".join(f"{k} {v}" for k, v in sorted(report["failures"].items())) or "none"
    lines.append(f"failures by kind: {failures}")
    unexpected = ", ".join(f"{k} {v}" for k, v in sorted(report["unexpected"].items()))
    lines.append(f"unexpected failures: {unexpected or 'none'}")
    lines.append(f"kills: {', '.join(f'{t} {n}' for t, n in report['kills'].items())}")
    lines.append(
        f"client RSS: {report['client_rss_start']:.1f} MiB at start, "
        f"{report['client_rss_warm']:.1f} after the flood, {report['client_rss_end']:.1f} at end"
    )
    for transport, lives in report["server_rss_lives"].items():
        figures = ", ".join(f"{value:.1f}" for value in lives)
        lines.append(f"server RSS ({transport}) at the end of each life, MiB: {figures}")
    lines.append("result: " + ("PASSED" if report["passed"] else "FAILED"))
    return "\n".join(lines)


def run_soak(args: argparse.Namespace) -> int:
    """The ``soak`` subcommand; the exit status is 0 when the soak passed."""
    transports = TRANSPORTS if args.transport == "both" else (args.transport,)
    if args.churn:
        return _run_churn(args, tuple(transports))
    if args.network:
        return _run_network(args, tuple(transports))
    options = Options(
        args.duration, tuple(transports), args.kill_interval, args.clients, args.flood, args.json
    )
    print(
        f"soaking for {options.duration:.0f} s ({'+'.join(transports)}): a flood first, "
        f"then mixed load with a line per server kill, and the report at the end",
        flush=True,
    )
    report = asyncio.run(soak(options))
    return _conclude(report, format_report(report), options.json_path)


def _conclude(report: dict[str, Any], text: str, json_path: str | None) -> int:
    """Print the report, write it as JSON if asked; the exit status is 0 when it passed."""
    print(text, flush=True)
    if json_path:
        with open(json_path, "w") as out:
            json.dump(report, out, indent=2, default=str)
    return 0 if report["passed"] else 1


def _run_churn(args: argparse.Namespace, transports: tuple[str, ...]) -> int:
    options = ChurnOptions(
        transports=transports,
        agents=args.agents,
        processes=args.agent_processes,
        interval=args.churn_interval,
        fraction=args.churn_fraction,
        duration=args.duration,
    )
    print(
        f"churn soak ({'+'.join(transports)}, open files limit {raise_fd_limit():,}): "
        f"{options.agents:,} agents, {options.fraction:.0%} replaced every "
        f"{options.interval:g} s for {options.duration:g} s per transport",
        flush=True,
    )
    report = asyncio.run(churn_soak(options))
    return _conclude(report, format_churn_report(report), args.json)


def _run_network(args: argparse.Namespace, transports: tuple[str, ...]) -> int:
    options = NetworkOptions(
        transports=transports,
        duration=args.duration,
        shortest=args.flap_shortest,
        longest=args.flap_longest,
    )
    print(
        f"network soak ({'+'.join(transports)}) for {options.duration:g} s: mixed load both "
        f"ways, direct and through a relay, while the links flap; the report at the end",
        flush=True,
    )
    report = asyncio.run(network_soak(options))
    return _conclude(report, format_network_report(report), args.json)


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``soak``."""
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds")
    parser.add_argument("--transport", choices=(*TRANSPORTS, "both"), default="both")
    parser.add_argument(
        "--kill-interval", type=float, default=DEFAULT_KILL_INTERVAL, help="seconds between kills"
    )
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="per transport")
    parser.add_argument("--flood", type=int, default=DEFAULT_FLOOD, help="calls per transport")
    parser.add_argument("--json", help="also write the report as JSON to this path")
    churn = parser.add_argument_group("the churn soak (--churn)")
    churn.add_argument(
        "--churn",
        action="store_true",
        help="instead: a fleet of agents in other processes, a share replaced every interval, "
        "the bound side's memory and open files watched for --duration",
    )
    churn.add_argument("--agents", type=int, default=DEFAULT_AGENTS, help="agents connected")
    churn.add_argument(
        "--agent-processes",
        type=int,
        default=DEFAULT_AGENT_PROCESSES,
        help="processes the agents live in",
    )
    churn.add_argument(
        "--churn-interval", type=float, default=DEFAULT_CHURN_INTERVAL, help="seconds"
    )
    churn.add_argument(
        "--churn-fraction",
        type=float,
        default=DEFAULT_CHURN_FRACTION,
        help="share of the agents replaced every interval",
    )
    network = parser.add_argument_group("the network soak (--network, needs root)")
    network.add_argument(
        "--network",
        action="store_true",
        help="instead: the load between processes in a network test bed, the links flapping "
        "instead of the server being killed; nothing may fail",
    )
    network.add_argument(
        "--flap-shortest", type=float, default=DEFAULT_FLAP_SHORTEST, help="seconds down, least"
    )
    network.add_argument(
        "--flap-longest", type=float, default=DEFAULT_FLAP_LONGEST, help="seconds down, most"
    )
