"""The network soak (``python -m callosum_like soak --network``): link flaps, not kills.

Theory of operation: one network test bed (``tools.netbed``, root) holds, for each transport,
a manager in host ``m`` and two agents in host ``a``, one connected directly and one through
a relay in host ``r``, each a process of ``tools.flaps`` with resumption on
(``RESUME_TIMEOUT``) and the flaps' heartbeat (a second: every flap suspends a session).
They call each other both ways with the soak's mixed load (small echoes, ``load.BIG_BODY``
echoes, streams) for ``--duration`` seconds while the links of ``a`` and ``m`` go down in
turn, each for a random ``--flap-shortest`` to ``--flap-longest`` seconds, every time the
load has recovered from the one before (``flaps.scenarios.flap_series``).

Where the process soak expects ``PeerDisconnectedError`` around each kill, here nothing may
fail: the soak *passes* when no call failed, no handler ran twice or never, no stream item
was lost, repeated or out of order, and the load recovered from every flap. The report
gives each path's calls, those counts and the sessions it resumed.

Only ``soak.cli`` imports this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from ..flaps.scenarios import LOAD, FlapPlan, flap_series
from ..flaps.stage import HOSTS, Settings, Stage
from ..netbed.bed import NetBed
from .load import BIG_BODY

__all__ = ["RESUME_TIMEOUT", "NetworkOptions", "network_soak", "format_network_report"]

#: Seconds a broken session is kept: far longer than a flap and its reconnection.
RESUME_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkOptions:
    """What the network soak was asked to do (see ``soak --help``)."""

    transports: tuple[str, ...]
    duration: float
    shortest: float
    longest: float
    seed: int = 0


async def network_soak(options: NetworkOptions) -> dict[str, Any]:
    """Run the network soak; return the report (see ``format_network_report``)."""
    # The flaps' heartbeat (stage.Settings): every flap of a second or more suspends the
    # sessions it cuts, so that each one is a resumption, not a stall TCP rides out.
    settings = Settings(resume_timeout=RESUME_TIMEOUT, big_size=BIG_BODY)
    plan = FlapPlan(
        count=2**31,
        shortest=options.shortest,
        longest=options.longest,
        seed=options.seed,
        duration=options.duration,
    )
    async with NetBed(HOSTS) as bed, Stage(bed, settings) as stage:
        paths = []
        for transport in options.transports:
            for relayed in (False, True):
                paths.append(await stage.open_path(transport, relayed=relayed))
        print(
            f"network soak: {len(paths)} paths, flaps of {options.shortest:g}-"
            f"{options.longest:g} s for {options.duration:g} s",
            flush=True,
        )
        result = await flap_series(stage, paths, plan, LOAD)
    report: dict[str, Any] = {"options": asdict(options), **result}
    report["passed"] = not result["stalled"] and all(
        path["verdict"]["passed"] for path in result["paths"].values()
    )
    return report


def format_network_report(report: dict[str, Any]) -> str:
    """The report as text, one fact per line."""
    options = report["options"]
    recovery = report["recovery"]
    lines = [
        f"callosum_like network soak: {options['duration']:g} s, "
        f"{'+'.join(options['transports'])}, each direct and through a relay",
        f"link flaps: {len(report['flaps'])} of {options['shortest']:g}-{options['longest']:g} s"
        + (" (the load did not recover from the last one)" if report["stalled"] else "")
        + (
            f"; load back after {recovery['median']:.2f} s (median), {recovery['longest']:.2f} s"
            " at most"
            if recovery["median"] is not None
            else ""
        ),
    ]
    for label, path in report["paths"].items():
        verdict = path["verdict"]
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(verdict["by_kind"].items()))
        failed = ", ".join(f"{kind} {count}" for kind, count in sorted(verdict["failed"].items()))
        lines += [
            f"{label}: {verdict['calls']:,} calls ({kinds}); sessions resumed "
            f"{path['sessions_resumed']}",
            f"  failed calls: {failed or 'none'}; handlers run twice {verdict['duplicates']}, "
            f"never {verdict['missing']}; stream items lost {verdict['lost_items']}, repeated "
            f"{verdict['repeated_items']}, streams out of order {verdict['reordered_streams']}",
        ]
    lines.append("result: " + ("PASSED" if report["passed"] else "FAILED"))
    return "\n".join(lines)
