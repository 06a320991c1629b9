"""The live console: a read-only HTTP page and JSON of a process's peers, their links and rates.

Theory of operation: ``Console`` watches *targets*, peers and relays: those given to it, and
every peer it is an interceptor of (``attached``/``detached``). As an interceptor it also
keeps, per direction (``out`` for calls made, ``in`` for requests served, ``via`` for calls
a relay passed on) and method, the
totals, the calls in flight, and per-second buckets over the last ``window`` seconds, from
which it reports rates and mean latencies. Nothing is sent anywhere: ``state()`` renders a
snapshot on demand, and ``start`` serves it on a small read-only HTTP endpoint
(``endpoint.HTTPEndpoint``, 127.0.0.1 by default):

* ``/api/state``: the snapshot as JSON: per target its identity, address, links (the names
  it reaches, nested ones behind relays included), the federation tree of those names
  (``relay/agent`` is ``agent`` under ``relay``), and ``statistics()`` when it has them;
  per method its rates and latency;
* ``/``: ``console.html`` (package data), a page with inline script and style, no asset
  fetched from anywhere, that polls ``/api/state`` every second and draws the tree and the
  rates. It writes names as text, never as markup: names come from the network.

Read-only by design: the endpoint answers GET and HEAD only, and nothing it serves changes
anything. It shows names and rates of the fleet: keep it on loopback, or put it behind a
proxy that authenticates (docs/observability.md).

Only users import this module (``callosum_like.telemetry``); it needs nothing beyond the
package.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from types import TracebackType
from typing import Any, Final, Self

from ..interceptors import (
    CallProceed,
    ForwardDone,
    ForwardedCall,
    Interceptor,
    OutgoingCall,
    RequestProceed,
    StreamProceed,
)
from ..options import check_positive
from ..request import Body, Request
from .endpoint import HTTPEndpoint, Page

__all__ = ["Console", "DEFAULT_WINDOW", "MAX_METHODS"]

#: Seconds of history behind the rates and mean latencies.
DEFAULT_WINDOW: Final = 10.0
#: (direction, method) pairs the console keeps; calls of further methods are not broken
#: down (counted under ``"(other)"``), so a flood of names cannot grow its memory.
MAX_METHODS: Final = 1000
_OTHER: Final = "(other)"


class _MethodStats:
    """One direction and method: totals, in flight, and per-second buckets."""

    __slots__ = ("buckets", "calls", "errors", "in_flight")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.in_flight = 0
        self.buckets: deque[list[float]] = deque()  # [second, calls, errors, seconds]

    def done(self, now: float, seconds: float, failed: bool, window: float) -> None:
        self.in_flight -= 1
        self.calls += 1
        self.errors += failed
        second = float(int(now))
        if not self.buckets or self.buckets[-1][0] != second:
            self.buckets.append([second, 0, 0, 0.0])
            while self.buckets and self.buckets[0][0] <= second - window:
                self.buckets.popleft()
        bucket = self.buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += seconds

    def report(self, now: float, window: float) -> dict[str, Any]:
        recent = [b for b in self.buckets if b[0] > now - window]
        calls = sum(b[1] for b in recent)
        return {
            "calls": self.calls,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "rate": round(calls / window, 3),
            "error_rate": round(sum(b[2] for b in recent) / window, 3),
            "mean_ms": round(sum(b[3] for b in recent) / calls * 1000, 3) if calls else None,
        }


class Console(Interceptor):
    """A live view of peers and relays over HTTP; see the module's docstring.

    Use it as ``interceptors=[console]`` on the peers whose per-method rates it should show,
    and/or give it peers and relays to show (their links and statistics) as ``targets``.

    Args:
        targets: Peers and relays to show, besides those it is an interceptor of.
        host: Address to serve at; loopback by default. Anything else exposes the fleet's
            names and rates: put it behind an authenticating proxy.
        port: Port to serve at; 0 (the default) picks a free one (see ``port``).
        window: Seconds of history behind the rates and mean latencies.

    Raises:
        TypeError, ValueError: A wrong ``host``, ``port`` or ``window``.
    """

    def __init__(
        self,
        *targets: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        window: float = DEFAULT_WINDOW,
    ) -> None:
        self._window = check_positive("window", window)
        self._targets: dict[int, Any] = {id(t): t for t in targets}
        self._methods: dict[tuple[str, str], _MethodStats] = {}
        self._endpoint = HTTPEndpoint(
            {"/": self._page, "/index.html": self._page, "/api/state": self._json},
            host=host,
            port=port,
            headers={"Content-Security-Policy": _POLICY, "X-Frame-Options": "DENY"},
        )
        self._html = resources.files(__package__).joinpath("console.html").read_bytes()

    # -- serving ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port served at (the real one for port 0). Raises ``RuntimeError`` before start."""
        return self._endpoint.port

    @property
    def url(self) -> str:
        """The page's address, ``http://127.0.0.1:port/``. Raises as ``port``."""
        return self._endpoint.url

    async def start(self) -> Self:
        """Start serving; returns ``self``.

        Raises:
            OSError: The address cannot be bound.
            RuntimeError: Already started.
        """
        await self._endpoint.start()
        return self

    async def aclose(self) -> None:
        """Stop serving. Idempotent."""
        await self._endpoint.aclose()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _page(self) -> Page:
        return Page(self._html, "text/html; charset=utf-8")

    def _json(self) -> Page:
        return Page(json.dumps(self.state()).encode(), "application/json")

    # -- what it shows ----------------------------------------------------------------------------

    def watch(self, target: Any) -> None:
        """Show ``target`` (a ``Peer`` or a ``Relay``) from now on."""
        self._targets[id(target)] = target

    def unwatch(self, target: Any) -> None:
        """Stop showing ``target``; nothing happens if it was not shown."""
        self._targets.pop(id(target), None)

    def attached(self, peer: Any) -> None:
        """Show ``peer`` while it is open."""
        self.watch(peer)

    def detached(self, peer: Any) -> None:
        """Stop showing ``peer``."""
        self.unwatch(peer)

    def state(self) -> dict[str, Any]:
        """The snapshot that ``/api/state`` serves (plain data for ``json.dumps``)."""
        now = time.time()
        methods = [
            {"direction": direction, "method": method, **stats.report(now, self._window)}
            for (direction, method), stats in sorted(self._methods.items())
        ]
        targets = [_describe(target) for target in list(self._targets.values())]
        return {"time": now, "window": self._window, "targets": targets, "methods": methods}

    # -- as an interceptor ------------------------------------------------------------------------

    async def intercept_call(self, call: OutgoingCall, proceed: CallProceed) -> Body:
        """Count and time one call made."""
        return await self._timed("out", call.method, proceed(call))

    async def intercept_stream(
        self, call: OutgoingCall, proceed: StreamProceed
    ) -> AsyncIterator[Body]:
        """Count and time one stream made."""
        stats, started, failed = self._begin("out", call.method), time.perf_counter(), True
        try:
            async for item in proceed(call):
                yield item
            failed = False
        finally:
            self._end(stats, started, failed)

    async def intercept_request(self, request: Request, proceed: RequestProceed) -> Body:
        """Count and time one request served."""
        return await self._timed("in", request.method, proceed(request))

    def intercept_forward(self, call: ForwardedCall) -> ForwardDone:
        """Count and time one call a relay passes on (direction ``via``)."""
        stats, started = self._begin("via", call.method), time.perf_counter()

        def done(outcome: str) -> None:
            self._end(stats, started, outcome != "ok")

        return done

    async def _timed(self, direction: str, method: str, outcome: Any) -> Body:
        stats, started, failed = self._begin(direction, method), time.perf_counter(), True
        try:
            result = await outcome
            failed = False
            return result
        finally:
            self._end(stats, started, failed)

    def _begin(self, direction: str, method: str) -> _MethodStats:
        key = (direction, method)
        stats = self._methods.get(key)
        if stats is None:
            if len(self._methods) >= MAX_METHODS:
                key = (direction, _OTHER)
            stats = self._methods.setdefault(key, _MethodStats())
        stats.in_flight += 1
        return stats

    def _end(self, stats: _MethodStats, started: float, failed: bool) -> None:
        stats.done(time.time(), time.perf_counter() - started, failed, self._window)


#: The page runs its own inline script and style only, and talks only to its own origin.
_POLICY: Final = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def _describe(target: Any) -> dict[str, Any]:
    """A peer or relay as ``/api/state`` shows it."""
    try:
        address = target.address
    except RuntimeError:
        address = None  # not open (yet, or any more)
    names = sorted(target.peers)
    described: dict[str, Any] = {
        "identity": target.identity,
        "kind": type(target).__name__.lower(),
        "address": address,
        "links": names,
        "tree": _tree(target.identity, names),
    }
    statistics = getattr(target, "statistics", None)
    if statistics is not None:
        described["statistics"] = dataclasses.asdict(statistics())
    connected = getattr(target, "upstream_connected", None)
    if connected is not None:
        described["upstream_connected"] = connected
    return described


def _tree(root: str, names: Iterable[str]) -> dict[str, Any]:
    """``names`` as a tree under ``root``: ``a/b`` is ``b`` among the children of ``a``."""
    top: dict[str, Any] = {"name": root, "path": "", "children": []}
    index: dict[str, dict[str, Any]] = {"": top}
    for name in sorted(names, key=lambda n: (n.count("/"), n)):
        parent, _, leaf = name.rpartition("/")
        node = {"name": leaf, "path": name, "children": []}
        index.setdefault(parent, top)["children"].append(node)
        index[name] = node
    return top
