"""W4 over a lossy, slow network: QUIC, TCP and ZeroMQ side by side in one run.

Theory of operation: one network test bed (``tools.netbed``: hosts ``a`` and ``b`` around a
router) gets ``--delay`` ms one way between the hosts (the bed's delay forwarder) and
``--loss`` % of the packets to and from ``b`` dropped (nftables). For each transport in turn,
a ``bench-server`` runs in ``b`` and a ``bench-client`` in ``a``, measuring W4: 64-byte calls,
one in flight, while large echoes (``--big-mib``) flow on the same connection. Over TCP (and
ZeroMQ, which runs on TCP) a lost packet of the large body holds back every small call behind
it until it is retransmitted; over QUIC each call travels on its own stream. The figures go to
the terminal and, as JSON, to ``--output``.

Run as root: ``python -m callosum_like.tools.bench.lossy`` (``make bench-lossy``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..certificates import tool_certificates
from ..netbed.bed import NetBed
from .steps import Outcome, parse_result
from .workloads import MiB, Workload

__all__ = ["main", "run"]

#: The transports compared, in the order they run.
TRANSPORTS = ("quic", "tcp", "zeromq")


def workload(big_mib: int, big_calls: int) -> Workload:
    """W4 with ``big_calls`` echoes of ``big_mib`` MiB beside the small calls."""
    return Workload(
        key="W4",
        kind="head_of_line",
        title=f"64-byte calls, 1 in flight, beside {big_calls} {big_mib} MiB echoes",
        warmup=20,
        big_size=big_mib * MiB,
        big_calls=big_calls,
    )


async def one(bed: NetBed, transport: str, load: Workload, timeout: float) -> Outcome:
    """Measure ``load`` over ``transport``: the server in ``b``, the client in ``a``."""
    command = ("-m", "callosum_like")
    server_args = ("bench-server", "--transport", transport, "--host", bed.address("b"))
    async with bed.spawn("b", f"{transport} server", *command, *server_args, relay=False) as server:
        address = await server.ready()
        client_args = (
            "bench-client",
            "--transport",
            transport,
            "--connect",
            address,
            "--server-pid",
            str(server.pid),
            "--workload",
            json.dumps(dataclasses.asdict(load)),
            "--call-timeout",
            str(timeout),
        )
        async with bed.spawn(
            "a", f"{transport} client", *command, *client_args, relay=False
        ) as client:
            try:
                await client.wait(timeout)
            except TimeoutError:
                return Outcome(error=f"no result within {timeout} s")
            if client.result is None:
                return Outcome(error=f"no result: {client.tail()}")
            return parse_result(client.result)


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Build the bed, set the conditions, measure every transport; return the report."""
    tool_certificates()  # made once, shared by every child
    load = workload(args.big_mib, args.big_calls)
    results: dict[str, object] = {}
    async with NetBed(("a", "b")) as bed:
        await bed.delay(args.delay)
        await bed.loss("b", args.loss)
        for transport in args.transports.split(","):
            outcome = await one(bed, transport, load, args.timeout)
            results[transport] = outcome.metrics or {"error": outcome.error}
            print(f"{transport:7} {_line(results[transport])}", flush=True)
    return {
        "conditions": {"loss_percent": args.loss, "delay_ms_one_way": args.delay},
        "workload": dataclasses.asdict(load),
        "results": results,
    }


def _line(metrics: object) -> str:
    if not isinstance(metrics, dict) or "error" in metrics:
        return f"error: {metrics}"
    return (
        f"small p50 {metrics['p50_us'] / 1e3:8.1f} ms  p99 {metrics['p99_us'] / 1e3:8.1f} ms  "
        f"small calls {int(metrics['small_calls']):6}  big {metrics['big_mb_per_s']:6.2f} MB/s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module doc."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loss", type=float, default=2.0, help="percent, to and from b")
    parser.add_argument("--delay", type=float, default=20.0, help="ms one way")
    parser.add_argument("--big-mib", type=int, default=16)
    parser.add_argument("--big-calls", type=int, default=1)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per transport")
    parser.add_argument("--output", type=Path, default=Path("bench/results/lossy.json"))
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
