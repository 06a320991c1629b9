"""W4 over a lossy, slow network: QUIC, TCP and ZeroMQ side by side in one run.

Theory of operation: one network test bed (``tools.netbed``: hosts ``a`` and ``b`` around a
router) gets ``--delay`` ms one way between the hosts (the bed's delay forwarder) and
``--loss`` % of the packets to and from ``b`` dropped (nftables). For each transport in turn,
a ``bench-server`` runs in ``b`` and a ``bench-client`` in ``a``, measuring W4: 64-byte calls,
one in flight, while large echoes (``--big-mib``) flow on the same connection. Over TCP (and
ZeroMQ, which runs on TCP) a lost packet of the large body holds back every small call behind
it until it is retransmitted; over QUIC each call travels on its own stream. The links'
segmentation offloads are off (``NetBed.offloads``; ``--offloads`` keeps them), so that the
loss rule drops single packets for every transport alike; the loss rules' counters (packets
seen and dropped, per direction) are reported with each transport's figures.

Mind the delay: the bed's forwarder delays TCP by relaying it (it terminates each TCP
connection in the router and dials the other host), so TCP recovers a loss on ``b``'s link
over that leg's sub-millisecond round trip, while QUIC's datagrams are relayed one by one
and QUIC recovers over the whole delayed path. With ``--delay 0`` no forwarder runs and
every transport is end to end: a comparison of loss alone. The figures go to the terminal
and, as JSON, to ``--output``.

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


def workload(big_mib: int, big_calls: int, seconds: float) -> Workload:
    """W4: small calls beside ``big_calls`` or more echoes of ``big_mib`` MiB.

    The echoes go on, one after the other, for at least ``seconds``.
    """
    return Workload(
        key="W4",
        kind="head_of_line",
        title=f"64-byte calls, 1 in flight, beside {big_mib} MiB echoes "
        f"(at least {big_calls}, for at least {seconds:g} s)",
        warmup=20,
        big_size=big_mib * MiB,
        big_calls=big_calls,
        big_seconds=seconds,
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
    load = workload(args.big_mib, args.big_calls, args.seconds)
    results: dict[str, object] = {}
    async with NetBed(("a", "b")) as bed:
        if args.delay:  # (0: no forwarder, so TCP is not split at the router)
            await bed.delay(args.delay)
        if not args.offloads:
            await bed.offloads("a", False)
            await bed.offloads("b", False)
        await bed.loss("b", args.loss)
        for transport in args.transports.split(","):
            before = await bed.loss_counters("b")
            outcome = await one(bed, transport, load, args.timeout)
            after = await bed.loss_counters("b")
            results[transport] = outcome.metrics or {"error": outcome.error}
            drops = {
                side: [now - then for now, then in zip(after[side], before[side], strict=True)]
                for side in after
                if side in before
            }
            results[transport]["loss_counters"] = drops  # type: ignore[index]
            print(f"{transport:7} {_line(results[transport])}  seen/dropped {drops}", flush=True)
    return {
        "conditions": {
            "loss_percent": args.loss,
            "delay_ms_one_way": args.delay,
            "segmentation_offloads": args.offloads,
        },
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
    parser.add_argument(
        "--delay", type=float, default=20.0, help="ms one way (0: no forwarder; see the doc)"
    )
    parser.add_argument("--big-mib", type=int, default=16)
    parser.add_argument("--big-calls", type=int, default=1)
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="repeat the big echoes for at least this long (enough small calls everywhere)",
    )
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument(
        "--offloads",
        action="store_true",
        help="keep the links' segmentation offloads on (TCP is then dropped 64 KiB at a time)",
    )
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
