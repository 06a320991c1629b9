"""The interceptor chains the benchmark measures: none, a pass-through one, OpenTelemetry.

Theory of operation: ``bench-server`` and ``bench-client`` take ``--interceptors KIND`` and
give both peers of a step ``chain(KIND)``: ``none`` is no chain at all (a Peer's
``interceptors=[]`` is the same thing: no chain); ``noop`` is one interceptor whose hooks
only proceed, the cost of the chain's machinery; ``otel`` is
``telemetry.OpenTelemetry()`` with an SDK tracer provider that batches spans to an exporter
that drops them, the cost of making, propagating and ending a client and a server span per
call without the cost of shipping them anywhere.

Only the benchmark's modules import this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from ...interceptors import CallProceed, Interceptor, OutgoingCall, RequestProceed
from ...request import Body, Request

__all__ = ["KINDS", "chain"]

#: The values of ``--interceptors``.
KINDS: Final = ("none", "noop", "otel")


class _PassThrough(Interceptor):
    """Proceeds, and nothing else, around calls and requests."""

    async def intercept_call(self, call: OutgoingCall, proceed: CallProceed) -> Body:
        return await proceed(call)

    async def intercept_request(self, request: Request, proceed: RequestProceed) -> Body:
        return await proceed(request)


def chain(kind: str) -> Sequence[Interceptor]:
    """The interceptors of a benchmark peer for ``--interceptors kind``.

    Raises:
        ValueError: ``kind`` is not one of ``KINDS``.
    """
    if kind == "none":
        return []
    if kind == "noop":
        return [_PassThrough()]
    if kind == "otel":
        return [_otel()]
    raise ValueError(f"interceptors must be one of {', '.join(KINDS)}, not {kind!r}")


def _otel() -> Interceptor:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from ...telemetry.otel import OpenTelemetry

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    return OpenTelemetry(tracer_provider=provider)
