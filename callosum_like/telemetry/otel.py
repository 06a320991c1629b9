"""OpenTelemetry traces: a client span per call made, a server span per request served.

Theory of operation: ``OpenTelemetry`` is an ``Interceptor``. Around an outgoing call or
stream it starts a CLIENT span (a child of the caller's current span), writes the span's
context into the call's headers with the globally configured propagator (W3C
``traceparent``/``tracestate`` by default) and ends the span with the call's outcome.
Around an incoming request it reads the context back out of ``request.headers``, starts a
SERVER span under it and makes that span current while the handler runs, so that calls the
handler makes are its children. Relays pass call headers on untouched (docs/PROTOCOL.md §11),
so a call from a manager through relays to an agent, and the agent's calls back, are one
trace. A relay given this interceptor adds an INTERNAL span per call it passes on, from the
call passing to its reply passing back: a child of the caller's span, beside the callee's.

Spans follow OpenTelemetry's RPC semantic conventions (semconv 1.38, the
``opentelemetry-semantic-conventions`` 0.66b2 package): name ``rpc.method``; attributes
``rpc.system.name`` (and the older ``rpc.system``) ``"callosum_like"``, ``rpc.method``,
``server.address`` (the callee's identity) on client spans and ``client.address`` (the
caller's ``peer_id``) on server spans, ``rpc.response.status_code`` (``"ok"`` or the name of
the error the caller gets) and, on failure, ``error.type`` with the span's status ERROR. A
cancelled call ends its span with the code ``"cancelled"`` and no error status.

Tracers come from the global tracer provider unless one is given, taken when the
interceptor is made: a provider configured later is used all the same (OpenTelemetry's
proxy tracer). Only users import this module (``callosum_like.telemetry``); it needs
``opentelemetry-api`` (the ``otel`` extra).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Final

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..interceptors import (
    CallProceed,
    ForwardDone,
    ForwardedCall,
    Interceptor,
    OutgoingCall,
    RequestProceed,
    StreamProceed,
)
from ..request import Body, Request

__all__ = ["OpenTelemetry", "RPC_SYSTEM"]

#: The value of ``rpc.system.name`` (and ``rpc.system``) on every span.
RPC_SYSTEM: Final = "callosum_like"
_INSTRUMENTATION: Final = "callosum_like"


class _HeaderGetter(Getter[Mapping[str, str | bytes]]):
    """Reads propagation fields out of call headers (bytes values are decoded)."""

    def get(self, carrier: Mapping[str, str | bytes], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        return [value.decode("latin-1") if isinstance(value, bytes) else value]

    def keys(self, carrier: Mapping[str, str | bytes]) -> list[str]:
        return list(carrier)


_GETTER: Final = _HeaderGetter()


class OpenTelemetry(Interceptor):
    """Traces every call made and request served; see the module's docstring.

    Args:
        tracer_provider: Where spans go; by default the globally configured provider.
        propagator: How the context travels in call headers; by default the globally
            configured one (W3C Trace Context and Baggage unless configured otherwise).
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        from .. import __version__

        self._tracer = trace.get_tracer(
            _INSTRUMENTATION, __version__, tracer_provider=tracer_provider
        )
        self._propagator = propagator

    def __repr__(self) -> str:
        return f"<OpenTelemetry interceptor {self._tracer!r}>"

    async def intercept_call(self, call: OutgoingCall, proceed: CallProceed) -> Body:
        """A CLIENT span around the call, its context sent in the call's headers."""
        span = self._client_span(call)
        try:
            return await _traced(span, proceed(call))
        finally:
            span.end()

    async def intercept_stream(
        self, call: OutgoingCall, proceed: StreamProceed
    ) -> AsyncIterator[Body]:
        """A CLIENT span from the stream's start to its end; ``callosum_like.stream.items``."""
        span = self._client_span(call)
        items = 0
        try:
            async for item in proceed(call):
                items += 1
                yield item
        except BaseException as exc:
            _failed(span, exc)
            raise
        else:
            span.set_attribute("rpc.response.status_code", "ok")
        finally:
            span.set_attribute("callosum_like.stream.items", items)
            span.end()

    async def intercept_request(self, request: Request, proceed: RequestProceed) -> Body:
        """A SERVER span under the caller's context, current while the handler runs."""
        parent = self._extract(request.headers)
        span = self._tracer.start_span(
            request.method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_attributes(request.method, "client.address", request.peer_id),
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            return await _traced(span, proceed(request))
        finally:
            context.detach(token)
            span.end()

    def intercept_forward(self, call: ForwardedCall) -> ForwardDone:
        """A relay's hop: an INTERNAL span from the call passing to its reply passing back.

        It is a child of the caller's span (read from the headers, which the relay passes on
        unchanged), so it is a sibling of the callee's SERVER span.
        """
        span = self._tracer.start_span(
            call.method,
            context=self._extract(call.headers),
            kind=SpanKind.INTERNAL,
            attributes={
                **_attributes(call.method, "client.address", call.caller),
                "server.address": call.callee,
                "callosum_like.relay": call.relay,
            },
        )

        def done(outcome: str) -> None:
            span.set_attribute("rpc.response.status_code", outcome)
            if outcome not in ("ok", "cancelled"):
                span.set_attribute("error.type", outcome)
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end()

        return done

    def _client_span(self, call: OutgoingCall) -> Span:
        span = self._tracer.start_span(
            call.method,
            kind=SpanKind.CLIENT,
            attributes=_attributes(call.method, "server.address", call.peer),
        )
        carrier: dict[str, str] = {}
        ctx = trace.set_span_in_context(span)
        if self._propagator is None:
            propagate.inject(carrier, context=ctx)
        else:
            self._propagator.inject(carrier, context=ctx)
        call.headers.update(carrier)
        return span

    def _extract(self, headers: Mapping[str, str | bytes]) -> context.Context:
        if self._propagator is None:
            return propagate.extract(headers, getter=_GETTER)
        return self._propagator.extract(headers, getter=_GETTER)


def _attributes(method: str, peer_key: str, peer: str | None) -> dict[str, str]:
    attributes = {"rpc.system.name": RPC_SYSTEM, "rpc.system": RPC_SYSTEM, "rpc.method": method}
    if peer is not None:
        attributes[peer_key] = peer
    return attributes


async def _traced(span: Span, outcome: Awaitable[Body]) -> Body:
    """Await ``outcome``; record on ``span`` how it ended (the caller ends the span)."""
    try:
        result = await outcome
    except BaseException as exc:
        _failed(span, exc)
        raise
    span.set_attribute("rpc.response.status_code", "ok")
    return result


def _failed(span: Span, exc: BaseException) -> None:
    """End-of-span attributes for a call or request that raised ``exc``."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        span.set_attribute("rpc.response.status_code", "cancelled")
        return
    name = type(exc).__name__
    span.set_attributes({"rpc.response.status_code": name, "error.type": name})
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{name}: {exc}"[:256]))
