"""The benchmark's workloads, W1 to W7, in a full and a ``--quick`` size.

Theory of operation: a ``Workload`` is a frozen value the parent sends to each client process
as JSON (``dataclasses.asdict``), and the client's ``measure.measure`` runs it by its ``kind``.
The two catalogues differ in counts only, so a quick run exercises every code path. W6 and W7
are *fleet* workloads (``Workload.fleet``): many agents in other processes around one bound
peer, which measures itself (``hub``); their sizes come from the command line
(``fleet_workloads``), with the issue's counts by default.

Only the benchmark's modules import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "MiB",
    "Workload",
    "FleetSizes",
    "FULL_WORKLOADS",
    "QUICK_WORKLOADS",
    "FULL_FLEET",
    "QUICK_FLEET",
    "fleet_workloads",
]

MiB: Final = 2**20


@dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    """One measured workload, sent to the client process as JSON.

    Attributes:
        key: Its name in tables and ``--workloads`` (``W1`` ... ``W5``, ``W3-16MiB``).
        kind: ``sequential``, ``concurrent``, ``head_of_line`` or ``stream``.
        title: A one-line description.
        body_size: Bytes in each echoed body (the small body for ``head_of_line``).
        calls: Calls measured.
        warmup: Calls made before measuring (not timed).
        in_flight: Calls kept in flight (``concurrent``).
        big_size: Bytes of the big bodies echoed alongside (``head_of_line``).
        big_calls: Big echoes made (``head_of_line``).
        big_seconds: ``head_of_line``: go on making big echoes, one after the other, until
            this many seconds have passed (so that a fast transport measures as many small
            calls as a slow one); 0: just ``big_calls``.
        stream_size: Bytes streamed (``stream``).
        chunk_size: Bytes in each streamed chunk (``stream``).
        agents: Connecting peers around the bound one (fleet workloads; 0 for the others).
        processes: Processes the agents are spread over.
        settle_seconds: Seconds the fleet is left alone once connected, before measuring.
        idle_seconds: Seconds the bound side's CPU is measured over (``idle``).
    """

    key: str
    kind: str
    title: str
    body_size: int = 64
    calls: int = 0
    warmup: int = 0
    in_flight: int = 1
    big_size: int = 0
    big_calls: int = 0
    big_seconds: float = 0.0
    stream_size: int = 0
    chunk_size: int = MiB
    agents: int = 0
    processes: int = 0
    settle_seconds: float = 0.0
    idle_seconds: float = 0.0

    @property
    def group(self) -> str:
        """``W1`` ... ``W7``: the issue's workload this one belongs to."""
        return self.key.split("-", 1)[0]

    @property
    def fleet(self) -> bool:
        """Whether it is a fleet workload (a hub and agents processes, this project only)."""
        return self.agents > 0


def _workloads(scale: int, w1: int, w2: int, stream: int) -> tuple[Workload, ...]:
    """The five workloads; ``scale`` divides the large-body counts for ``--quick``."""
    return (
        Workload(
            key="W1",
            kind="sequential",
            title=f"64-byte echo, 1 in flight, {w1:,} calls",
            calls=w1,
            warmup=w1 // 10,
        ),
        Workload(
            key="W2",
            kind="concurrent",
            title=f"64-byte echo, 64 in flight, {w2:,} calls",
            calls=w2,
            warmup=w2 // 25,
            in_flight=64,
        ),
        Workload(
            key="W3-1MiB",
            kind="sequential",
            title=f"1 MiB echoes, sequential, {200 // scale} calls",
            body_size=MiB,
            calls=200 // scale,
            warmup=2,
        ),
        Workload(
            key="W3-16MiB",
            kind="sequential",
            title=f"16 MiB echoes, sequential, {20 // scale} calls",
            body_size=16 * MiB,
            calls=20 // scale,
            warmup=1,
        ),
        Workload(
            key="W4",
            kind="head_of_line",
            title=f"64-byte calls, 1 in flight, beside {10 // scale} 16 MiB echoes",
            warmup=50,
            big_size=16 * MiB,
            big_calls=10 // scale,
        ),
        Workload(
            key="W5",
            kind="stream",
            title=f"a {_size_text(stream)} stream in 1 MiB chunks",
            warmup=4,
            stream_size=stream,
        ),
    )


def _size_text(size: int) -> str:
    return f"{size // 2**30} GiB" if size >= 2**30 else f"{size // MiB} MiB"


FULL_WORKLOADS: Final = _workloads(1, w1=5_000, w2=50_000, stream=2**30)
QUICK_WORKLOADS: Final = _workloads(10, w1=200, w2=2_000, stream=32 * MiB)


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetSizes:
    """The sizes of the fleet workloads (``bench``'s ``--fleet-*`` options).

    Attributes:
        idle_agents: W6's agent counts, one workload each.
        processes: Processes the agents of every fleet workload are spread over.
        idle_seconds: Seconds of idleness W6 measures the bound side's CPU over.
        settle_seconds: Seconds a connected fleet is left alone before it is measured.
        fan_out_agents: W7's agents.
        rounds: W7's measured ``invoke_all`` rounds (and a tenth as many to warm up).
    """

    idle_agents: tuple[int, ...]
    processes: int
    idle_seconds: float
    settle_seconds: float
    fan_out_agents: int
    rounds: int


def fleet_workloads(sizes: FleetSizes) -> tuple[Workload, ...]:
    """W6 at each of ``sizes.idle_agents``, then W7."""
    where = f"in {sizes.processes} processes"
    idle = tuple(
        Workload(
            key=f"W6-{_count_text(agents)}",
            kind="idle",
            title=f"{agents:,} idle agents {where}, bound side over {sizes.idle_seconds:g} s",
            agents=agents,
            processes=sizes.processes,
            settle_seconds=sizes.settle_seconds,
            idle_seconds=sizes.idle_seconds,
        )
        for agents in sizes.idle_agents
    )
    fan_out = Workload(
        key="W7",
        kind="fan_out",
        title=f"invoke_all of a 64-byte echo to {sizes.fan_out_agents:,} agents {where}, "
        f"{sizes.rounds:,} rounds",
        calls=sizes.rounds,
        warmup=max(sizes.rounds // 10, 1),
        agents=sizes.fan_out_agents,
        processes=sizes.processes,
        settle_seconds=sizes.settle_seconds,
    )
    return (*idle, fan_out)


def _count_text(count: int) -> str:
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


#: The issue's fleet sizes: W6 at 1,000 and 10,000 agents, W7 at 1,000, four processes each;
#: two heartbeat intervals (the default 5 s) to settle, 30 s of idle CPU.
FULL_FLEET: Final = FleetSizes(
    idle_agents=(1_000, 10_000),
    processes=4,
    idle_seconds=30.0,
    settle_seconds=10.0,
    fan_out_agents=1_000,
    rounds=200,
)
QUICK_FLEET: Final = FleetSizes(
    idle_agents=(20,),
    processes=2,
    idle_seconds=1.0,
    settle_seconds=0.5,
    fan_out_agents=20,
    rounds=20,
)
