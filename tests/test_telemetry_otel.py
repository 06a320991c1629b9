"""OpenTelemetry: one trace across a manager, two relays and an agent, with the SDK's exporter."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import callosum_like as cl
from callosum_like.telemetry import OpenTelemetry

from .conftest import PairFactory, bind_address, connect_address, open_relay

pytestmark = pytest.mark.timeout(30)

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans of the globally configured provider (set once per process, as in an app)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def by_name_and_kind(finished: tuple[ReadableSpan, ...]) -> dict[tuple[str, SpanKind], Any]:
    table = {(span.name, span.kind): span for span in finished}
    assert len(table) == len(finished), [s.name for s in finished]
    return table


@pytest.mark.asyncio
async def test_a_call_through_two_relays_and_the_call_back_are_one_trace(
    transport_kind: str, spans: InMemorySpanExporter
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        manager = await stack.enter_async_context(
            cl.Peer(
                bind=bind_address(transport_kind),
                identity="manager",
                interceptors=[OpenTelemetry()],
            )
        )
        hops = [OpenTelemetry()]  # the relays' hop spans
        upper = await open_relay(
            stack, transport_kind, connect_address(manager), "upper", interceptors=hops
        )
        lower = await open_relay(
            stack,
            transport_kind,
            connect_address(upper),  # type: ignore[arg-type]
            "lower",
            interceptors=hops,
        )
        agent = await stack.enter_async_context(
            cl.Peer(
                connect=connect_address(lower),  # type: ignore[arg-type]
                identity="agent",
                interceptors=[OpenTelemetry()],
            )
        )

        async def work(request: cl.Request) -> Any:
            assert "traceparent" in request.headers
            return await agent.invoke("report", request.body + 1)

        async def report(request: cl.Request) -> Any:
            return [request.peer_id, request.body]

        agent.handle_function("work", work)
        manager.handle_function("report", report)
        await manager.wait_for_peer("upper/lower/agent", timeout=10)
        assert await manager.invoke("work", 1, to="upper/lower/agent") == [
            "upper/lower/agent",
            2,
        ]

    finished = spans.get_finished_spans()
    relayed = [span for span in finished if span.kind is SpanKind.INTERNAL]
    table = by_name_and_kind(tuple(span for span in finished if span not in relayed))
    assert set(table) == {
        ("work", SpanKind.CLIENT),
        ("work", SpanKind.SERVER),
        ("report", SpanKind.CLIENT),
        ("report", SpanKind.SERVER),
    }
    root = table["work", SpanKind.CLIENT]
    chain = [
        root,
        table["work", SpanKind.SERVER],
        table["report", SpanKind.CLIENT],
        table["report", SpanKind.SERVER],
    ]
    assert root.parent is None
    for parent, child in itertools.pairwise(chain):
        assert child.context.trace_id == root.context.trace_id
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id
        assert child.parent.is_remote == (child.kind is SpanKind.SERVER)
    for span in chain:
        assert span.attributes is not None
        assert span.attributes["rpc.system.name"] == "callosum_like"
        assert span.attributes["rpc.system"] == "callosum_like"
        assert span.attributes["rpc.method"] == span.name
        assert span.attributes["rpc.response.status_code"] == "ok"
        assert span.status.status_code is StatusCode.UNSET
    assert root.attributes is not None
    assert root.attributes["server.address"] == "upper/lower/agent"
    assert table["work", SpanKind.SERVER].attributes["client.address"] == "lower"  # type: ignore[index]
    assert table["report", SpanKind.CLIENT].attributes["server.address"] == "lower"  # type: ignore[index]
    assert table["report", SpanKind.SERVER].attributes["client.address"] == "upper/lower/agent"  # type: ignore[index]
    # Each relay's hop: a child of the caller's span, beside the callee's; same trace.
    hops = {(span.name, span.attributes["callosum_like.relay"]): span for span in relayed}  # type: ignore[index]
    assert set(hops) == {(n, r) for n in ("work", "report") for r in ("upper", "lower")}
    for (name, _), hop in hops.items():
        assert hop.context.trace_id == root.context.trace_id
        assert hop.parent.span_id == table[name, SpanKind.CLIENT].context.span_id  # type: ignore[union-attr]
        assert hop.attributes["rpc.response.status_code"] == "ok"  # type: ignore[index]
    assert hops["work", "upper"].attributes["client.address"] == "manager"  # type: ignore[index]
    assert hops["work", "upper"].attributes["server.address"] == "lower/agent"  # type: ignore[index]
    assert hops["report", "lower"].attributes["client.address"] == "agent"  # type: ignore[index]


async def fail(request: cl.Request) -> Any:
    raise ValueError("no")


async def count(request: cl.Request) -> AsyncIterator[int]:
    for i in range(request.body):
        yield i


@pytest.mark.asyncio
async def test_failures_and_streams_are_spans_too(
    make_pair: PairFactory, spans: InMemorySpanExporter
) -> None:
    provider = TracerProvider()  # a provider of its own, given explicitly
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server, client = await make_pair(
        interceptors=[OpenTelemetry(tracer_provider=provider)],
        client={"interceptors": [OpenTelemetry(tracer_provider=provider)]},
    )
    server.handle_function("fail", fail)
    server.handle_function("count", count)
    with pytest.raises(cl.RPCUserError):
        await client.invoke("fail")
    assert [i async for i in client.stream("count", 3)] == [0, 1, 2]
    with pytest.raises(cl.MethodNotFoundError):
        await client.invoke("nothing")
    table = by_name_and_kind(exporter.get_finished_spans())
    assert spans.get_finished_spans() == ()  # nothing went to the global provider
    client_fail, server_fail = table["fail", SpanKind.CLIENT], table["fail", SpanKind.SERVER]
    assert client_fail.status.status_code is StatusCode.ERROR
    assert client_fail.attributes["error.type"] == "RPCUserError"  # type: ignore[index]
    assert server_fail.attributes["error.type"] == "ValueError"  # type: ignore[index]
    assert server_fail.parent.span_id == client_fail.context.span_id  # type: ignore[union-attr]
    stream = table["count", SpanKind.CLIENT]
    assert stream.attributes["callosum_like.stream.items"] == 3  # type: ignore[index]
    assert table["count", SpanKind.SERVER].parent.span_id == stream.context.span_id  # type: ignore[union-attr]
    missing = table["nothing", SpanKind.CLIENT]  # no server span: no handler ran
    assert missing.attributes["error.type"] == "MethodNotFoundError"  # type: ignore[index]
    assert ("nothing", SpanKind.SERVER) not in table
    provider.shutdown()
