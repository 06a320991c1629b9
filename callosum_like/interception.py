"""The calling side of a Peer with interceptors: each call and stream through the chain.

Theory of operation: a Peer with interceptors puts an ``InterceptedCaller`` in front of its
``calls.Caller``; one without them calls the ``Caller`` directly, so that their calls pay
nothing for the feature (no frame, no branch, no allocation). ``InterceptedCaller`` has the
``Caller``'s three entry points with the same arguments:

* ``invoke`` checks the arguments, builds the ``OutgoingCall`` the interceptors see and runs
  ``InterceptorChain.call``; the end of the chain makes the call as the interceptors left
  it (``to``, headers, order key and timeout read back from the ``OutgoingCall``);
* ``stream`` does the same around ``Caller.stream`` with ``InterceptorChain.stream``;
* ``call_all`` makes each call as an ``invoke`` in a task of its own (``asyncio.gather``),
  so that each passes the chain; the body is checked once before anything is sent.

Only ``peer`` uses this module.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

from .calls import Caller, Route
from .errors import RPCError
from .interceptors import InterceptorChain, OutgoingCall
from .request import Body, Headers
from .wire.codec import pack_body

__all__ = ["InterceptedCaller"]


class InterceptedCaller:
    """Makes a Peer's calls through its interceptors.

    Args:
        caller: Makes the calls themselves.
        chain: The Peer's interceptors.
    """

    def __init__(self, caller: Caller, chain: InterceptorChain) -> None:
        self._caller = caller
        self._chain = chain

    def invoke(
        self,
        route: Route,
        method: str,
        body: Body,
        order_key: str | None,
        to: str | None,
        timeout: float | None,
        headers: Headers | None,
    ) -> Awaitable[Body]:
        """As ``Caller.invoke``, through the interceptors' ``intercept_call``.

        Raises:
            TypeError, ValueError: Misused arguments, at once (before any interceptor).
        """
        call = self._outgoing(route, method, to, order_key, timeout, headers)
        return self._chain.call(call, functools.partial(self._invoke_as, route, body))

    def _invoke_as(self, route: Route, body: Body, call: OutgoingCall) -> Awaitable[Body]:
        """The end of the chain: the call as the interceptors left it."""
        return self._caller.invoke(
            route, call.method, body, call.order_key, call.to, call.timeout, call.headers
        )

    def stream(
        self,
        route: Route,
        to: str | None,
        method: str,
        body: Body,
        *,
        order_key: str | None,
        timeout: float | None,
        headers: Headers | None,
    ) -> AsyncIterator[Body]:
        """As ``Caller.stream``, through the interceptors' ``intercept_stream``.

        Raises:
            TypeError, ValueError: Misused arguments, at once (before any interceptor).
        """
        call = self._outgoing(route, method, to, order_key, timeout, headers, stream=True)

        def last(call: OutgoingCall) -> AsyncIterator[Body]:
            return self._caller.stream(
                route,
                call.to,
                call.method,
                body,
                order_key=call.order_key,
                timeout=call.timeout,
                headers=call.headers,
            )

        return self._chain.stream(call, last)

    async def call_all(
        self,
        route: Route,
        names: Iterable[str],
        method: str,
        body: Body,
        *,
        timeout: float | None,
        headers: Headers | None,
    ) -> dict[str, Any]:
        """As ``Caller.call_all``: one intercepted ``invoke`` per name, side by side.

        Raises:
            TypeError, ValueError: Misused arguments; ``body`` not msgpack-serializable.
                Nothing was sent then.
        """
        self._caller.check(method, None, timeout, headers)
        pack_body(body)  # unserializable: raise before anything is sent, as Caller does
        names = list(names)
        calls = [self.invoke(route, method, body, None, name, timeout, headers) for name in names]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        return dict(zip(names, outcomes, strict=True))

    def _outgoing(
        self,
        route: Route,
        method: str,
        to: str | None,
        order_key: str | None,
        timeout: float | None,
        headers: Headers | None,
        stream: bool = False,
    ) -> OutgoingCall:
        """The ``OutgoingCall`` the interceptors see (misused arguments raise first)."""
        self._caller.check(method, order_key, timeout, headers)
        peer = to
        if to is None:
            try:
                peer = route(None)[0].identity
            except RPCError:
                peer = None  # ambiguous or gone: the call itself will say so
        return OutgoingCall(
            method=method,
            to=to,
            peer=peer,
            headers=dict(headers or {}),
            order_key=order_key,
            timeout=timeout,
            stream=stream,
        )
