"""What a flap run does on a ``stage.Stage``: a series of flaps under load, a flap too long.

Theory of operation: each scenario drives the nodes of a stage through the conductor and
returns plain data (for JSON, the figures' tables and the tests' assertions).

* ``flap_series``: the mixed load runs both ways on every path while, ``count`` times (or
  until ``duration`` seconds have passed, if given), the link of one host (``a`` and ``m``
  in turn) goes down for a random time between ``shortest`` and ``longest`` seconds and
  comes back; before the next flap every node must have completed ``progress`` more
  operations within ``recovery`` seconds (a path that cannot recover stops the series
  there, and is reported), then the link stays up a random ``0 .. settle`` seconds more, so
  that flaps fall at different points of the load. At the end the load drains (for at most
  ``drain`` seconds) and each path's books are judged (``Stage.results``).
* ``measure``: over whatever the bed's knobs make of the link, the agent of a direct path
  makes ``small`` small calls and then ``big`` uploads of the stage's ``big_size``, one at a
  time; it returns the small calls' median and 99th percentile and each upload's rate.
* ``long_flap``: with no other load, each side of a direct path holds ``holds`` calls whose
  handlers run until cancelled (the precondition: all of them are seen running), then the
  agent's link goes down until every held call has ended, and comes back. It returns each
  held call's outcome and its time to failure from the moment the link went down, the runs
  and cancellations of their handlers, and the outcome of a call made each way before the
  flap and after it (a new session).

Only the flap tools, the soak and the tests import this module.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from .books import percentile
from .stage import AGENT_HOST, CONTROL_TIMEOUT, MANAGER_HOST, Path, Stage

__all__ = ["FlapPlan", "LOAD", "flap_series", "long_flap", "measure"]

#: The mixed load of a flap series: per path and direction, two loops of small calls, one
#: of large echoes, one of streams of 100 items 10 ms apart (a second each).
LOAD: Final = {
    "small": 2,
    "big": True,
    "streams": True,
    "stream_items": 100,
    "stream_interval": 0.01,
}
#: Seconds every node gets by default to complete its operations after a flap before the
#: series stops.
RECOVERY_TIMEOUT: Final = 60.0
#: Seconds each node gets by default to finish the operations in flight when the load stops.
DRAIN: Final = 60.0
#: Seconds between two looks at the handlers a long flap holds.
POLL_INTERVAL: Final = 0.05
#: Seconds a measurement may take: a 16 MiB upload at 5 % loss and 50 ms takes minutes.
MEASURE_WAIT: Final = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FlapPlan:
    """A series of flaps (see ``flap_series``)."""

    count: int
    shortest: float = 1.0
    longest: float = 5.0
    hosts: tuple[str, ...] = (AGENT_HOST, MANAGER_HOST)
    progress: int = 3
    settle: float = 1.0
    seed: int = 0
    recovery: float = RECOVERY_TIMEOUT
    drain: float = DRAIN
    duration: float | None = None


async def flap_series(
    stage: Stage, paths: Sequence[Path], plan: FlapPlan, load: dict[str, Any] = LOAD
) -> dict[str, Any]:
    """Run ``load`` on ``paths`` through ``plan``'s flaps; the flaps and each path's results.

    Returns:
        ``flaps``: ``[host, seconds down, seconds to recover or None]`` each; ``recovery``:
        the median and the longest recovery; ``stalled``: whether a flap was not recovered
        from (the series stopped there); ``paths``: ``Stage.results``.
    """
    rng = random.Random(plan.seed)
    deadline = None if plan.duration is None else time.monotonic() + plan.duration
    await stage.start(paths, load)
    stalled = await stage.progressed(paths, plan.progress, plan.recovery) is None
    flaps: list[list[Any]] = []
    for number in range(0 if stalled else plan.count):
        if deadline is not None and time.monotonic() >= deadline:
            break
        host = plan.hosts[number % len(plan.hosts)]
        seconds = round(rng.uniform(plan.shortest, plan.longest), 2)
        await stage.flap(host, seconds)
        recovered = await stage.progressed(paths, plan.progress, plan.recovery)
        flaps.append([host, seconds, None if recovered is None else round(recovered, 3)])
        if recovered is None:
            stalled = True
            break
        await asyncio.sleep(rng.uniform(0, plan.settle))
    await stage.stop(paths, plan.drain)
    recoveries = [flap[2] for flap in flaps if flap[2] is not None]
    return {
        "flaps": flaps,
        "recovery": {
            "median": statistics.median(recoveries) if recoveries else None,
            "longest": max(recoveries, default=None),
        },
        "stalled": stalled,
        "paths": await stage.results(paths),
    }


async def long_flap(stage: Stage, path: Path, holds: int) -> dict[str, Any]:
    """Flap the agent's link until ``holds`` held calls each way have ended (see the doc).

    Returns:
        ``before``/``after``: the outcomes of a call each way (manager's, agent's);
        ``held``: each held call's ``[outcome, seconds from the flap to its end]`` by id;
        ``ran``/``cancelled``: runs and cancellations of their handlers, by id;
        ``seconds``: the quickest and the slowest failure; ``bound``: ``resume_timeout +
        heartbeat_timeout``; ``down``: how long the link was down.
    """
    settings = stage.settings
    before = await _probe(stage, path)
    await stage.ask(path.agent, "hold", {"targets": [None], "count": holds})
    await stage.ask(path.manager, "hold", {"targets": [path.target], "count": holds})
    await _until_blocked(stage, path, holds)
    wait = settings.resume_timeout + settings.heartbeat_timeout + CONTROL_TIMEOUT
    down_at = time.monotonic()
    await stage.bed.down(AGENT_HOST)
    try:
        ends = await asyncio.gather(
            stage.ask(path.agent, "held", wait=wait), stage.ask(path.manager, "held", wait=wait)
        )
    finally:
        down = time.monotonic() - down_at
        await asyncio.shield(stage.bed.up(AGENT_HOST))
    after = await _probe(stage, path)
    held = {op_id: [end[0], end[1] - down_at] for side in ends for op_id, end in side.items()}
    books = [await stage.ask(node, "books") for node in path.nodes]
    ran: dict[str, int] = dict.fromkeys(held, 0)
    cancelled = dict(ran)
    for report in books:
        for op_id in held:
            ran[op_id] += report["ran"].get(op_id, 0)
            cancelled[op_id] += report["cancelled"].get(op_id, 0)
    times = [seconds for _, seconds in held.values()]
    return {
        "before": before,
        "after": after,
        "held": held,
        "ran": ran,
        "cancelled": cancelled,
        "seconds": {"min": min(times), "median": percentile(times, 0.5), "max": max(times)},
        "bound": settings.resume_timeout + settings.heartbeat_timeout,
        "down": down,
    }


async def _probe(stage: Stage, path: Path) -> list[str]:
    """One small call each way (each once its remote is connected); manager's, agent's."""
    wait = stage.settings.resume_timeout + CONTROL_TIMEOUT
    body = {"remote": path.remote, "wait": wait}
    manager = await stage.ask(path.manager, "probe", {"targets": [path.target], **body}, wait)
    agent = await stage.ask(path.agent, "probe", {"targets": [None], **body}, wait)
    return [*manager, *agent]


async def _until_blocked(stage: Stage, path: Path, holds: int) -> None:
    """Wait until both sides run ``holds`` held handlers (each side runs the other's)."""
    async with asyncio.timeout(CONTROL_TIMEOUT):
        while True:
            running = [await stage.ask(node, "blocked") for node in path.nodes]
            if running == [holds, holds]:
                return
            await asyncio.sleep(POLL_INTERVAL)


async def measure(stage: Stage, path: Path, small: int, big: int) -> dict[str, Any]:
    """Small calls, then large uploads, from the agent of ``path`` (see the module's doc).

    Returns:
        ``small_p50_ms``, ``small_p99_ms``, ``big_mib_per_s`` (each upload's rate, in MiB
        of body per second), ``big_seconds`` and ``failed`` (calls that failed).
    """
    size = stage.settings.big_size
    spec = {"small": small, "big": big, "big_size": size}
    body = {"target": None, "spec": spec}
    result = await stage.ask(path.agent, "measure", body, wait=MEASURE_WAIT)
    small_ms, big_seconds = result["small_ms"], result["big_seconds"]
    return {
        "small_calls": small,
        "small_p50_ms": percentile(small_ms, 0.5),
        "small_p99_ms": percentile(small_ms, 0.99),
        "big_mib_per_s": [size / 2**20 / seconds for seconds in big_seconds],
        "big_seconds": big_seconds,
        "failed": result["failed"],
    }
