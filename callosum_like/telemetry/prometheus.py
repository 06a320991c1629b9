"""Prometheus metrics: calls and requests by method and outcome, latencies, peer gauges.

Theory of operation: ``Prometheus`` is an ``Interceptor``. Around every call made (and
stream) it counts the call and observes its duration, labelled by method and outcome
(``"ok"`` or the name of the error the caller got); around every request served, the same
on the serving side. The gauges are not kept up to date on the hot path: a collector reads
``statistics()`` of every peer the interceptor is attached to when Prometheus scrapes.
Every metric is registered in one ``prometheus_client`` registry: the global one by default
(what ``prometheus_client.start_http_server`` serves), or the user's own. ``serve`` starts
an HTTP endpoint with ``/metrics`` (``endpoint.HTTPEndpoint``, 127.0.0.1 by default).

Metrics (all prefixed ``callosum_like_``):

* ``client_calls_total{method,outcome}``, ``client_call_duration_seconds{method,outcome}``:
  calls and streams this process made;
* ``server_requests_total{method,outcome}``,
  ``server_request_duration_seconds{method,outcome}``: requests its handlers served (a
  request refused before its handler, e.g. for an unknown method or overload, is not one);
* ``relay_forwarded_total{method,outcome}``,
  ``relay_forward_duration_seconds{method,outcome}``: calls a relay given this interceptor
  passed on, from the call passing to its reply passing back;
* gauges per peer (labels ``peer``, its identity, and ``address``): ``links`` (connected
  remotes), ``calls_in_flight``, ``requests_running``, ``requests_queued``; and counters
  per peer: ``bytes_sent_total``, ``bytes_received_total``, ``dropped_messages_total``.

Method names label the series: a peer's own calls name their methods, and requests are
counted only for registered handlers, so the label's values are bounded by the application.

Only users import this module (``callosum_like.telemetry``); it needs ``prometheus_client``
(the ``prometheus`` extra).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import Counter, Histogram
from prometheus_client.registry import Collector

from ..errors import RemoteError
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
from .endpoint import HTTPEndpoint, Page

__all__ = ["Prometheus", "PREFIX", "DEFAULT_BUCKETS"]

#: The prefix of every metric name.
PREFIX: Final = "callosum_like_"
#: Latency buckets in seconds: a small call on a LAN takes 50 µs to a few ms.
DEFAULT_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_LABELS: Final = ("method", "outcome")


class Prometheus(Interceptor):
    """Counts and times every call and request; gauges of the peers it is attached to.

    Create one per process (or per registry) and give it to every peer:
    ``cl.Peer(..., interceptors=[metrics])``.

    Args:
        registry: Where the metrics are registered; default the global
            ``prometheus_client.REGISTRY``.
        buckets: Latency histogram buckets, in seconds.

    Raises:
        ValueError: The registry already holds metrics of these names (a second
            ``Prometheus`` on the same registry).
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry = REGISTRY if registry is None else registry
        self._calls = Counter(
            PREFIX + "client_calls", "Calls made, by method and outcome", _LABELS, registry=None
        )
        self._call_seconds = Histogram(
            PREFIX + "client_call_duration_seconds",
            "Seconds from a call's start to its outcome, by method and outcome",
            _LABELS,
            buckets=buckets,
            registry=None,
        )
        self._requests = Counter(
            PREFIX + "server_requests",
            "Requests served, by method and outcome",
            _LABELS,
            registry=None,
        )
        self._request_seconds = Histogram(
            PREFIX + "server_request_duration_seconds",
            "Seconds a request's handler ran, by method and outcome",
            _LABELS,
            buckets=buckets,
            registry=None,
        )
        self._forwarded = Counter(
            PREFIX + "relay_forwarded",
            "Calls a relay passed on, by method and outcome",
            _LABELS,
            registry=None,
        )
        self._forward_seconds = Histogram(
            PREFIX + "relay_forward_duration_seconds",
            "Seconds from a call passing a relay to its reply passing back",
            _LABELS,
            buckets=buckets,
            registry=None,
        )
        self._peers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._collectors: list[Collector] = [
            self._calls,
            self._call_seconds,
            self._requests,
            self._request_seconds,
            self._forwarded,
            self._forward_seconds,
            _PeerCollector(self._peers),
        ]
        registered: list[Collector] = []
        try:
            for collector in self._collectors:
                registry.register(collector)
                registered.append(collector)
        except ValueError:
            for collector in registered:
                registry.unregister(collector)
            raise

    def unregister(self) -> None:
        """Take every metric of this interceptor out of its registry."""
        for collector in self._collectors:
            self.registry.unregister(collector)

    async def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> HTTPEndpoint:
        """Start serving the registry at ``http://host:port/metrics``; returns the endpoint.

        Close it with ``await endpoint.aclose()``; ``endpoint.port`` is the real port.

        Raises:
            OSError: The address cannot be bound.
        """
        registry = self.registry

        def metrics() -> Page:
            return Page(generate_latest(registry), CONTENT_TYPE_LATEST)

        return await HTTPEndpoint({"/metrics": metrics}, host=host, port=port).start()

    def attached(self, peer: Any) -> None:
        """Gauge ``peer`` from now on."""
        self._peers.add(peer)

    def detached(self, peer: Any) -> None:
        """Stop gauging ``peer``."""
        self._peers.discard(peer)

    async def intercept_call(self, call: OutgoingCall, proceed: CallProceed) -> Body:
        """Count and time one call made."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await proceed(call)
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self._observe(self._calls, self._call_seconds, call.method, outcome, started)

    async def intercept_stream(
        self, call: OutgoingCall, proceed: StreamProceed
    ) -> AsyncIterator[Body]:
        """Count and time one stream made, from its start to its end."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            async for item in proceed(call):
                yield item
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            self._observe(self._calls, self._call_seconds, call.method, outcome, started)

    async def intercept_request(self, request: Request, proceed: RequestProceed) -> Body:
        """Count and time one request served."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await proceed(request)
        except BaseException as exc:
            outcome = _outcome(exc, served=True)
            raise
        finally:
            method = request.method
            self._observe(self._requests, self._request_seconds, method, outcome, started)

    def intercept_forward(self, call: ForwardedCall) -> ForwardDone:
        """Count and time one call a relay passes on."""
        started = time.perf_counter()

        def done(outcome: str) -> None:
            self._observe(self._forwarded, self._forward_seconds, call.method, outcome, started)

        return done

    @staticmethod
    def _observe(
        counter: Counter, histogram: Histogram, method: str, outcome: str, started: float
    ) -> None:
        counter.labels(method, outcome).inc()
        histogram.labels(method, outcome).observe(time.perf_counter() - started)


def _outcome(exc: BaseException, *, served: bool = False) -> str:
    """The outcome label: the error class the caller gets (for a request served, as sent)."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    if served and not isinstance(exc, RemoteError):
        return "RPCUserError"  # the handler raised: its caller gets RPCUserError
    return type(exc).__name__  # a call's error, or a refusal by a later interceptor


#: Each gauge of a peer: its name, its help, and the field of ``PeerStatistics`` it reads.
_GAUGES: Final = (
    ("links", "Remotes connected with a completed handshake", "connected_peers"),
    ("calls_in_flight", "Calls made that await their reply", "calls_in_flight"),
    ("requests_running", "Handlers running", "requests_running"),
    ("requests_queued", "Requests waiting for a slot or for their order key", "requests_queued"),
)
_COUNTERS: Final = (
    ("bytes_sent", "Bytes of frames sent", "bytes_out"),
    ("bytes_received", "Bytes of frames received", "bytes_in"),
    (
        "dropped_messages",
        "Messages dropped as garbage, unexpected or oversized",
        "dropped_messages",
    ),
)


class _PeerCollector(Collector):
    """Reads the gauges of the attached peers when Prometheus scrapes."""

    def __init__(self, peers: Iterable[Any]) -> None:
        self._peers = peers

    def collect(self) -> Iterable[Metric]:
        labels = ["peer", "address"]
        gauges = [GaugeMetricFamily(PREFIX + n, h, labels=labels) for n, h, _ in _GAUGES]
        counters = [CounterMetricFamily(PREFIX + n, h, labels=labels) for n, h, _ in _COUNTERS]
        for peer in list(self._peers):
            try:
                stats, values = peer.statistics(), [peer.identity, peer.address]
            except RuntimeError:  # closed meanwhile
                continue
            for family, (_, _, field) in zip(gauges, _GAUGES, strict=True):
                family.add_metric(values, getattr(stats, field))
            for counter, (_, _, field) in zip(counters, _COUNTERS, strict=True):
                counter.add_metric(values, getattr(stats, field))
        return [*gauges, *counters]
