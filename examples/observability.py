"""Traces, metrics and the live console of a small federation, in one process.

    .venv/bin/python examples/observability.py             # runs, prints, exits
    .venv/bin/python examples/observability.py --serve 60  # and keeps the console open 60 s

Needs the extras ``otel`` (plus ``opentelemetry-sdk``) and ``prometheus``. A manager, a relay
``rack-1`` and two agents behind it; the manager calls ``work`` on each agent, and each agent
calls ``report`` back on the manager from inside its handler. Every peer and the relay have
the same three interceptors: ``OpenTelemetry()`` (spans to an in-memory exporter, printed as
a tree: each call and its call back are one trace, with the relay's hop beside the callee's
span), ``Prometheus()`` (its ``/metrics``
scraped over HTTP and a few lines printed) and a ``Console`` (open its URL in a browser to
see the federation tree and the rates; see docs/observability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import urllib.request
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import callosum_like as cl
from callosum_like.telemetry import Console, OpenTelemetry, Prometheus

AGENTS = ("rack-1/agent-1", "rack-1/agent-2")


def print_trees(spans: tuple[ReadableSpan, ...]) -> None:
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)

    def show(span: ReadableSpan, prefix: str, last: bool) -> None:
        attributes = span.attributes or {}
        if span.kind.name == "INTERNAL":  # a relay's hop
            kind, where = (
                "RELAY",
                f"{attributes['callosum_like.relay']} to {attributes['server.address']}",
            )
        elif span.kind.name == "CLIENT":
            kind, where = "CLIENT", f"to {attributes['server.address']}"
        else:
            kind, where = "SERVER", f"from {attributes['client.address']}"
        print(f"{prefix}{'└─' if last else '├─'} {span.name:<7} {kind:<6} {where}")
        below = children.get(span.context.span_id, [])
        for i, child in enumerate(below):
            show(child, prefix + ("   " if last else "│  "), i == len(below) - 1)

    for root in children.get(None, []):
        print(f"trace {root.context.trace_id:032x}")
        show(root, "", True)


def metrics_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    wanted = (
        "callosum_like_client_calls_total{",
        "callosum_like_server_requests_total{",
        "callosum_like_relay_forwarded_total{",
    )
    return [line for line in text.splitlines() if line.startswith(wanted)]


async def main(serve: float) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = Prometheus(registry=CollectorRegistry())
    console = Console()
    interceptors = [OpenTelemetry(tracer_provider=provider), metrics, console]

    async with contextlib.AsyncExitStack() as stack:
        manager = await stack.enter_async_context(
            cl.Peer(
                bind=cl.TCPAddress("127.0.0.1", 0), identity="manager", interceptors=interceptors
            )
        )
        host, port = manager.address.rsplit(":", 1)
        relay = await stack.enter_async_context(
            cl.Relay(
                bind=cl.TCPAddress("127.0.0.1", 0),
                upstream=cl.TCPAddress(host, int(port)),
                identity="rack-1",
                interceptors=interceptors,
            )
        )
        await relay.wait_upstream(timeout=10)
        host, port = relay.address.rsplit(":", 1)
        for name in ("agent-1", "agent-2"):
            agent = await stack.enter_async_context(
                cl.Peer(
                    connect=cl.TCPAddress(host, int(port)), identity=name, interceptors=interceptors
                )
            )

            async def work(request: cl.Request, agent: cl.Peer = agent) -> Any:
                return await agent.invoke("report", f"{agent.identity} did {request.body}")

            agent.handle_function("work", work)

        async def report(request: cl.Request) -> Any:
            return f"noted: {request.body}"

        manager.handle_function("report", report)
        for name in AGENTS:
            await manager.wait_for_peer(name, timeout=10)
        await stack.enter_async_context(console)
        print(f"console: {console.url} (read-only; --serve SECONDS keeps it open)")

        for name in AGENTS:
            print(f"manager -> {name}.work(1) = {await manager.invoke('work', 1, to=name)!r}")
        print_trees(exporter.get_finished_spans())

        endpoint = await metrics.serve()
        try:
            print("metrics:")
            for line in await asyncio.to_thread(metrics_lines, endpoint.port):
                print(f"  {line}")
        finally:
            await endpoint.aclose()
        if serve > 0:
            print(f"serving the console for {serve:g} s")
            end = asyncio.get_running_loop().time() + serve
            while asyncio.get_running_loop().time() < end:
                await manager.invoke_all("work", 2, to=AGENTS)
                await asyncio.sleep(0.2)
    provider.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=float, default=0, help="seconds to keep the console open")
    asyncio.run(main(parser.parse_args().serve))
