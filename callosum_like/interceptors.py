"""Interceptors: hooks around every call a Peer makes and every request it serves.

Theory of operation: ``Peer(..., interceptors=[a, b])`` wraps

* each outgoing ``invoke`` (and each call of ``invoke_all``) in ``intercept_call``,
* each outgoing ``stream`` in ``intercept_stream`` (an async iterator around the items),
* each incoming request, call or stream, in ``intercept_request``, in the handler's own
  task, after the request was admitted and its turn came (its ordering, the concurrency
  cap), right before the handler runs.

Each hook gets the call (an ``OutgoingCall``) or the ``Request`` and a ``proceed`` that runs
the rest of the chain; what ``proceed`` returns (or raises) is what the call comes to. The
first interceptor of the list is the outermost, as in a middleware stack: ``a`` sees the call
first and its outcome last, on both sides.

``InterceptorChain`` composes them and keeps the rules that protect the peer:

* an exception that came out of ``proceed`` (the call's own outcome, the handler's
  exception) passes through unchanged, whatever the interceptors did on its way;
* on the calling side, an ``RPCError`` an interceptor raises itself refuses the call and
  reaches the caller as it is; anything else it raises is logged once at ERROR to
  ``callosum_like.interceptors`` and the caller gets ``InterceptorError`` (its cause set);
* on the serving side, a ``RemoteError`` an interceptor raises (``RefusedError`` for an
  authorization check, ``OverloadedError`` for a rate limit) is the caller's error, with its
  wire code and message; anything else is logged once and answered ``RPCInternalError``.

Only hooks an interceptor overrides are called, and a Peer without interceptors has no chain
at all: its calls take the path they took before interceptors existed (no task, no
allocation per call). ``attached``/``detached`` tell an interceptor which peers it serves
(for gauges and consoles); an exception from them is logged and ignored.

A relay given interceptors calls ``intercept_forward`` for each call it passes on, in its
receive loop (so: synchronous, quick); the function it may return is called once with the
forwarded call's outcome. Their exceptions are logged and ignored: a relay never fails a call
for its observers.

``calls`` and ``dispatch`` use this module; it imports only ``errors`` and ``request``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from .errors import InterceptorError, RemoteError, RPCError, RPCInternalError
from .request import Body, Request

__all__ = [
    "Interceptor",
    "OutgoingCall",
    "ForwardedCall",
    "ForwardDone",
    "CallProceed",
    "StreamProceed",
    "RequestProceed",
    "InterceptorChain",
    "Refusal",
    "check_interceptors",
    "forward_ended",
    "interceptor_log",
]

#: Where an interceptor that failed is logged, once per failure, with its traceback.
interceptor_log: Final = logging.getLogger("callosum_like.interceptors")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True, kw_only=True, eq=False)
class OutgoingCall:
    """One call or stream this peer is about to make, as its interceptors see it.

    Interceptors may change the fields before they ``proceed``: what ``proceed`` sends is
    what the fields hold at that moment (add a header, shorten the timeout).

    Attributes:
        method: The remote method name.
        to: The ``to=`` of the call (the name it was addressed to), or ``None``.
        peer: The identity the call goes to: ``to`` when given, else the one remote it
            reaches (the bound side's identity, for a connecting peer); ``None`` when that
            is not known (no remote, or an ambiguous ``to=None``).
        headers: The call's headers, a dict of its own that interceptors may add to.
        order_key: The call's order key, or ``None``.
        timeout: Seconds the call may take (``None``: the peer's ``invoke_timeout``).
        stream: Whether this is a ``Peer.stream`` call.
    """

    method: str
    to: str | None
    peer: str | None
    headers: dict[str, str | bytes] = field(default_factory=dict)
    order_key: str | None = None
    timeout: float | None = None
    stream: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardedCall:
    """One call a relay passes on, as the relay's interceptors see it.

    Attributes:
        method: The method called.
        relay: The relay's identity.
        caller: Who sent it: the calling link's identity, and the route behind it.
        callee: Where it goes: the identity of the next hop, and the route behind it.
        headers: The call's headers, as they pass (read them; the relay changes nothing).
        stream: Whether it is a stream call.
    """

    method: str
    relay: str
    caller: str
    callee: str
    headers: Mapping[str, str | bytes]
    stream: bool = False


#: Told once how a forwarded call ended: ``"ok"``, the name of the error class its caller
#: gets (``"PeerDisconnectedError"`` when a hop was lost), or ``"cancelled"``.
ForwardDone = Callable[[str], None]
#: Runs the rest of the chain for an outgoing call; returns the remote handler's value.
CallProceed = Callable[[OutgoingCall], Awaitable[Body]]
#: Runs the rest of the chain for an outgoing stream; iterates over the remote's items.
StreamProceed = Callable[[OutgoingCall], AsyncIterator[Body]]
#: Runs the rest of the chain and the handler for an incoming request; returns its value
#: (``None`` for a stream handler, once its stream has ended).
RequestProceed = Callable[[Request], Awaitable[Body]]


class Interceptor:
    """Base class of interceptors: override the hooks you need, each defaults to ``proceed``.

    An interceptor instance may serve many peers at once (and a relay's two). Hooks run on
    the peer's event loop; they must not block it.
    """

    async def intercept_call(self, call: OutgoingCall, proceed: CallProceed) -> Body:
        """Around one outgoing call (``invoke``, and each call of ``invoke_all``).

        Args:
            call: The call; add headers to ``call.headers`` before proceeding.
            proceed: Sends the call (through the interceptors after this one) and returns
                the remote handler's value or raises the call's error.

        Returns:
            What ``invoke`` returns: normally what ``proceed`` returned.

        Raises:
            RPCError: Raise one (without proceeding) to refuse the call; the caller gets it.
        """
        return await proceed(call)

    def intercept_stream(self, call: OutgoingCall, proceed: StreamProceed) -> AsyncIterator[Body]:
        """Around one outgoing stream: return the iterator the caller's ``async for`` reads.

        Write it as an async generator (``async for item in proceed(call): yield item``)
        to see the items, the end and the errors. Leaving the caller's loop early closes
        the iterator that this returns (``GeneratorExit`` at its ``yield``).

        Args:
            call: The stream call (``call.stream`` is true).
            proceed: Opens the stream through the interceptors after this one.
        """
        return proceed(call)

    async def intercept_request(self, request: Request, proceed: RequestProceed) -> Body:
        """Around one incoming request, in its handler's task, right before the handler.

        Args:
            request: What the handler will get (``proceed`` may be given another one).
            proceed: Runs the interceptors after this one and the handler; returns the
                handler's value (``None`` for a stream handler, once its stream ended) or
                raises the handler's exception.

        Returns:
            The reply body: normally what ``proceed`` returned (ignored for streams).

        Raises:
            RemoteError: Raise one (``RefusedError``, ``OverloadedError``) without
                proceeding to refuse the request; the caller gets it, the handler never runs.
        """
        return await proceed(request)

    def intercept_forward(self, call: ForwardedCall) -> ForwardDone | None:
        """A relay with this interceptor passes ``call`` on (default: nothing).

        Called in the relay's receive loop: it must be quick and must not block.

        Returns:
            ``None``, or a function the relay calls once with the call's outcome.
        """
        return None

    def attached(self, peer: Any) -> None:
        """A ``Peer`` with this interceptor opened (default: nothing)."""

    def detached(self, peer: Any) -> None:
        """A ``Peer`` with this interceptor closed (default: nothing)."""


def _overrides(interceptor: Interceptor, hook: str) -> bool:
    return getattr(type(interceptor), hook) is not getattr(Interceptor, hook)


def check_interceptors(value: object) -> tuple[Interceptor, ...]:
    """Check ``Peer``'s ``interceptors`` argument; return it as a tuple.

    Raises:
        TypeError: It is not an iterable of ``Interceptor`` instances.
    """
    if value is None:
        return ()
    if isinstance(value, str | bytes | Interceptor) or not isinstance(value, Iterable):
        raise TypeError(f"interceptors must be a list of Interceptor, not {type(value).__name__}")
    interceptors = tuple(value)
    for item in interceptors:
        if not isinstance(item, Interceptor):
            raise TypeError(f"interceptors must hold Interceptor instances, not {item!r}")
    return interceptors


class Refusal(Exception):  # internal: carries the caller's error out of a chain
    """An interceptor on the serving side refused a request: ``error`` answers it."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__(error)
        self.error = error


class InterceptorChain:
    """The interceptors of one Peer, composed; see the module's docstring for the rules.

    Args:
        interceptors: Outermost first.
    """

    def __init__(self, interceptors: Sequence[Interceptor]) -> None:
        self.interceptors = tuple(interceptors)
        self._calls = [i.intercept_call for i in interceptors if _overrides(i, "intercept_call")]
        self._streams = [
            i.intercept_stream for i in interceptors if _overrides(i, "intercept_stream")
        ]
        self._requests = [
            i.intercept_request for i in interceptors if _overrides(i, "intercept_request")
        ]
        self._forwards = [
            i.intercept_forward for i in interceptors if _overrides(i, "intercept_forward")
        ]

    @property
    def watches_forwards(self) -> bool:
        """Whether any interceptor overrides ``intercept_forward``."""
        return bool(self._forwards)

    def forward(self, call: ForwardedCall) -> list[ForwardDone]:
        """Tell the interceptors that a relay passes ``call`` on; what to tell at its end."""
        done: list[ForwardDone] = []
        for hook in self._forwards:
            try:
                ends = hook(call)
            except Exception:
                interceptor_log.exception("%r failed on a forwarded call; ignored", hook)
                continue
            if ends is not None:
                done.append(ends)
        return done

    async def call(self, call: OutgoingCall, last: CallProceed) -> Body:
        """Run ``call`` through the ``intercept_call`` hooks; ``last`` sends it.

        Raises:
            InterceptorError: An interceptor failed with something other than an
                ``RPCError``.
            Exception: The call's own errors, or an interceptor's ``RPCError``.
        """
        if not self._calls:
            return await last(call)
        passed: list[BaseException] = []
        proceed = _nest(self._calls, _marking(last, passed))
        try:
            return await proceed(call)
        except Exception as exc:
            error = _calling_error(exc, passed, call)
            if error is exc:
                raise
            raise error from exc

    async def stream(self, call: OutgoingCall, last: StreamProceed) -> AsyncIterator[Body]:
        """Iterate ``call``'s stream through the ``intercept_stream`` hooks; ``last`` opens it.

        Every iterator of the chain is closed when this one is, outermost first.

        Raises:
            As for ``call``.
        """
        passed: list[BaseException] = []
        opened: list[AsyncIterator[Body]] = []

        async def innermost(outgoing: OutgoingCall) -> AsyncIterator[Body]:
            items = last(outgoing)
            opened.append(items)
            try:
                async for item in items:
                    yield item
            except BaseException as exc:
                passed.append(exc)
                raise

        proceed = _registering(innermost, opened)
        for hook in reversed(self._streams):
            proceed = _registering(_bind(hook, proceed), opened)
        try:
            async for item in proceed(call):
                yield item
        except Exception as exc:
            error = _calling_error(exc, passed, call)
            if error is exc:
                raise
            raise error from exc
        finally:
            for iterator in opened:
                await _close(iterator)

    async def request(self, request: Request, last: RequestProceed) -> Body:
        """Run ``request`` through the ``intercept_request`` hooks; ``last`` runs its handler.

        Raises:
            Refusal: An interceptor refused the request or failed; its ``error`` is the
                reply for the caller.
            Exception: The handler's own exception, unchanged.
        """
        if not self._requests:
            return await last(request)
        passed: list[BaseException] = []
        proceed = _nest(self._requests, _marking(last, passed))
        try:
            return await proceed(request)
        except Exception as exc:
            if any(exc is seen for seen in passed):
                raise
            if isinstance(exc, RemoteError):
                raise Refusal(exc) from None
            interceptor_log.error(
                "an interceptor failed on a request for %r from %r: %r (the caller gets "
                "RPCInternalError)",
                request.method,
                request.peer_id,
                exc,
                exc_info=exc,
            )
            failure = RPCInternalError(f"an interceptor of the remote failed: {exc!r}")
            raise Refusal(failure) from None

    def attach(self, peer: object) -> None:
        """Tell every interceptor that ``peer`` opened."""
        for interceptor in self.interceptors:
            _quietly(interceptor.attached, peer)

    def detach(self, peer: object) -> None:
        """Tell every interceptor that ``peer`` closed."""
        for interceptor in self.interceptors:
            _quietly(interceptor.detached, peer)


async def _close(iterator: AsyncIterator[Body]) -> None:
    """Close one iterator of a stream's chain; one that fails to close is logged, not raised."""
    close = getattr(iterator, "aclose", None)
    if close is None:
        return
    try:
        await close()
    except Exception:
        interceptor_log.exception("closing %r of an intercepted stream failed", iterator)


def forward_ended(done: list[ForwardDone], outcome: str) -> None:
    """Tell each of ``done`` how a forwarded call ended; failures are logged and ignored."""
    for ended in done:
        try:
            ended(outcome)
        except Exception:
            interceptor_log.exception("%r failed at the end of a forwarded call; ignored", ended)


def _quietly(hook: Callable[[object], None], peer: object) -> None:
    try:
        hook(peer)
    except Exception:
        interceptor_log.exception("%r failed for %r; ignored", hook, peer)


def _nest(
    hooks: Sequence[Callable[[T, Callable[[T], Awaitable[Body]]], Awaitable[Body]]],
    last: Callable[[T], Awaitable[Body]],
) -> Callable[[T], Awaitable[Body]]:
    """``hooks[0]`` around ``hooks[1]`` ... around ``last``."""
    proceed = last
    for hook in reversed(hooks):
        proceed = _bind(hook, proceed)
    return proceed


def _bind(hook: Callable[[T, Callable[[T], R]], R], proceed: Callable[[T], R]) -> Callable[[T], R]:
    def step(value: T) -> R:
        return hook(value, proceed)

    return step


def _marking(
    last: Callable[[T], Awaitable[Body]], passed: list[BaseException]
) -> Callable[[T], Awaitable[Body]]:
    """``last``, noting every exception that leaves it (they pass the chain unchanged)."""

    async def innermost(value: T) -> Body:
        try:
            return await last(value)
        except BaseException as exc:
            passed.append(exc)
            raise

    return innermost


def _registering(open_stream: StreamProceed, opened: list[AsyncIterator[Body]]) -> StreamProceed:
    """``open_stream``, noting each iterator it returns in ``opened`` (to close them all)."""

    def step(call: OutgoingCall) -> AsyncIterator[Body]:
        iterator = open_stream(call)
        opened.append(iterator)
        return iterator

    return step


def _calling_error(exc: Exception, passed: list[BaseException], call: OutgoingCall) -> Exception:
    """What the caller gets for ``exc``, which left the chain of ``call``."""
    if isinstance(exc, RPCError) or any(exc is seen for seen in passed):
        return exc
    interceptor_log.error(
        "an interceptor failed on the call of %r: %r", call.method, exc, exc_info=exc
    )
    return InterceptorError(f"an interceptor failed on the call of {call.method!r}: {exc!r}")
