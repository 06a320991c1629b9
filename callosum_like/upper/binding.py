"""How a typed service binds onto a Peer: the plumbing both IDL adaptors share.

Theory of operation:

* A service is a set of named functions. Function ``f`` of a service registered under
  ``name`` is the peer method ``"<name>.<f>"`` (``name`` defaults to the service's own name).
  ``BoundServer.attach`` registers one peer handler per function; ``BoundClient`` turns the
  attribute ``client.f`` into an awaitable that invokes ``"<name>.<f>"``.
* What ``Peer.invoke`` takes besides the body (order key, target peer, timeout, headers)
  travels in one frozen ``CallOptions`` value that a client carries. ``with_options`` returns
  a copy of the client with some options replaced, so these options never share a namespace
  with IDL argument names (an IDL function may well have an argument called ``timeout``).
* Handler objects may implement a function with ``def`` or ``async def``: ``call_handler``
  awaits the result only when it is awaitable. A plain ``def`` runs on the event loop.
  While it runs, ``current_request()`` returns the ``Request`` (caller identity, order key,
  headers) through a context variable, so handler signatures stay exactly the IDL's.

The subclasses (``thrift.ThriftServer``/``ThriftClient``, ``schema.SchemaServer``/
``SchemaClient``) supply the body codec: ``BoundServer._serve`` builds the peer handler of
one function and ``BoundClient._call`` performs one call. This module depends on no optional
package and on nothing of callosum_like but ``peer`` and ``request`` (and, for type checkers
only, the ``Ordering`` enum of ``ordering``).
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import inspect
import logging
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from callosum_like.peer import Peer
from callosum_like.request import Body, Handler, Headers, Request

if TYPE_CHECKING:
    from typing import Self

    from callosum_like.ordering import Ordering

__all__ = [
    "CallOptions",
    "OptionChanges",
    "BoundServer",
    "BoundClient",
    "call_handler",
    "check_name",
    "current_request",
]

log = logging.getLogger(__name__)

#: The value of a remote function: whatever the IDL's result type decodes to. It is ``Any``
#: because the stubs are made at run time from a file; no static type can describe them.
Result = Any

#: The request a handler method is serving (set by ``call_handler`` in the handler's task).
_CURRENT_REQUEST: contextvars.ContextVar[Request] = contextvars.ContextVar(
    "callosum_like.upper.current_request"
)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallOptions:
    """The ``Peer.invoke`` options a typed client applies to each of its calls.

    Attributes:
        order_key: Calls sharing a key are ordered by the serving method's ``Ordering``;
            ``None`` orders nothing.
        to: On the bound side, the identity of the connected peer to call.
        timeout: Seconds to wait for each reply, or ``None`` for the peer's ``invoke_timeout``.
        headers: Metadata sent with each call (``request.headers`` on the serving side).

    Raises:
        TypeError: An option has the wrong type.
        ValueError: ``timeout`` is negative.
    """

    order_key: str | None = None
    to: str | None = None
    timeout: float | None = None
    headers: Headers | None = None

    def __post_init__(self) -> None:
        for name in ("order_key", "to"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
        if self.timeout is not None:
            if not isinstance(self.timeout, int | float) or isinstance(self.timeout, bool):
                raise TypeError(f"timeout must be a number or None, not {self.timeout!r}")
            if not self.timeout >= 0:
                raise ValueError(f"timeout must not be negative, got {self.timeout}")
        if self.headers is not None:
            if not isinstance(self.headers, Mapping):
                raise TypeError(f"headers must be a mapping or None, not {self.headers!r}")
            # A read-only copy: later changes to the caller's dict do not leak into calls.
            object.__setattr__(self, "headers", types.MappingProxyType(dict(self.headers)))


class OptionChanges(TypedDict, total=False):
    """The keyword arguments of ``with_options``: any subset of ``CallOptions``."""

    order_key: str | None
    to: str | None
    timeout: float | None
    headers: Headers | None


def check_name(name: object, *, argument: str = "name") -> str:
    """Check a service name given by the user.

    Returns:
        ``name``, unchanged.

    Raises:
        TypeError: It is not a str.
        ValueError: It is empty.
    """
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str or None, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{argument} must not be empty")
    return name


def current_request() -> Request:
    """The request being served, for a handler method of a ``ThriftServer``/``SchemaServer``.

    Handler methods receive the decoded arguments only; this gives them the rest of the call:
    ``current_request().peer_id`` (who called), ``.order_key``, ``.headers``, ``.method``.

    Returns:
        The ``Request`` of the call the current task is serving.

    Raises:
        LookupError: Called outside a handler method.
    """
    try:
        return _CURRENT_REQUEST.get()
    except LookupError:
        raise LookupError(
            "current_request() works only inside a handler method of a typed server"
        ) from None


async def call_handler(
    request: Request,
    function: Callable[..., object],
    args: Sequence[object],
    kwargs: Mapping[str, object],
) -> object:
    """Call a handler method for ``request``, awaiting its result when it is awaitable.

    ``current_request()`` returns ``request`` while the method runs.

    Returns:
        What the method returned (or what its coroutine returned).

    Raises:
        Exception: Whatever the method raises.
    """
    token = _CURRENT_REQUEST.set(request)
    try:
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
    finally:
        _CURRENT_REQUEST.reset(token)


class BoundServer:
    """Serves the functions of one service on peers; subclasses supply ``_serve``.

    Args:
        name: The method prefix: function ``f`` is served as ``"<name>.<f>"``.
        functions: The service's function names.
        handler: The object implementing them, one method per function.

    Raises:
        TypeError: ``handler`` lacks a method for one of the functions.
    """

    def __init__(self, name: str, functions: Iterable[str], handler: object) -> None:
        self._name = name
        self._functions = tuple(functions)
        self._handler = handler
        for function in self._functions:
            if not callable(getattr(handler, function, None)):
                raise TypeError(
                    f"handler {type(handler).__name__} has no method {function!r}"
                    f" (for {name}.{function})"
                )

    @property
    def name(self) -> str:
        """The method prefix: function ``f`` is served as ``"<name>.<f>"``."""
        return self._name

    @property
    def methods(self) -> dict[str, str]:
        """The peer method name of each function, by function name."""
        return {function: f"{self._name}.{function}" for function in self._functions}

    def attach(
        self, peer: Peer, *, ordering: Ordering | Mapping[str, Ordering] | None = None
    ) -> None:
        """Register a peer handler for every function of the service.

        Args:
            peer: The peer to serve on (either side of a connection).
            ordering: One ``Ordering`` for every function, or a mapping from function name
                to ``Ordering`` (functions not in it use the peer's default).

        Raises:
            ValueError: ``ordering`` names a function the service does not have.
            TypeError: ``ordering`` is neither an ``Ordering``, a mapping nor ``None``.
        """
        per_function = _per_function(ordering, self._functions)
        for function, method in self.methods.items():
            peer.handle_function(
                method, self._serve(function, method), ordering=per_function.get(function)
            )
        log.debug("serving %s on %r", ", ".join(self.methods.values()), peer)

    def detach(self, peer: Peer) -> None:
        """Unregister the handlers that ``attach`` registered on ``peer``.

        Raises:
            KeyError: A function is not registered on ``peer``.
        """
        for method in self.methods.values():
            peer.unhandle_function(method)

    def _serve(self, function: str, method: str) -> Handler:
        """Build the peer handler of ``function``, served as ``method``."""
        raise NotImplementedError


def _per_function(
    ordering: Ordering | Mapping[str, Ordering] | None, functions: Sequence[str]
) -> Mapping[str, Ordering | None]:
    if ordering is None:
        return {}
    if isinstance(ordering, Mapping):
        unknown = sorted(set(ordering) - set(functions))
        if unknown:
            raise ValueError(f"ordering names unknown functions: {', '.join(unknown)}")
        return ordering
    return dict.fromkeys(functions, ordering)


class BoundClient:
    """Calls the functions of one remote service; subclasses supply ``_call``.

    ``client.f(...)`` is an awaitable for every function ``f`` of the service.

    Args:
        peer: The local peer to invoke through.
        name: The method prefix the remote serves the service under.
        functions: The service's function names.
        options: The ``invoke`` options applied to every call.
    """

    def __init__(
        self, peer: Peer, name: str, functions: Iterable[str], options: CallOptions
    ) -> None:
        if not isinstance(peer, Peer):
            raise TypeError(f"peer must be a callosum_like Peer, not {type(peer).__name__}")
        self._peer = peer
        self._name = name
        self._functions = frozenset(functions)
        self._options = options

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self._options}>"

    @property
    def name(self) -> str:
        """The method prefix: function ``f`` is invoked as ``"<name>.<f>"``."""
        return self._name

    @property
    def options(self) -> CallOptions:
        """The ``invoke`` options applied to every call of this client."""
        return self._options

    def with_options(self, **changes: Unpack[OptionChanges]) -> Self:
        """Return a copy of this client with some call options replaced.

        Typical use: ``await kv.with_options(order_key=key).put(key, value)``. The copy is
        cheap (it shares the peer and the service description).

        Args:
            **changes: Any of ``order_key``, ``to``, ``timeout`` and ``headers``; ``None``
                clears an option.

        Returns:
            A new client of the same class.

        Raises:
            TypeError: An unknown option, or an option of the wrong type.
            ValueError: A negative ``timeout``.
        """
        clone = copy.copy(self)  # keeps every other attribute, a subclass's too
        object.__setattr__(clone, "_options", dataclasses.replace(self._options, **changes))
        return clone

    def __getattr__(self, function: str) -> Callable[..., Awaitable[Result]]:
        if function.startswith("_"):  # not set yet (copy, pickle) or private: never a stub
            raise AttributeError(function)
        if function not in self._functions:
            raise AttributeError(f"service {self._name!r} has no function {function!r}")

        async def call(*args: object, **kwargs: object) -> Result:
            return await self._call(function, f"{self._name}.{function}", args, kwargs)

        call.__name__ = function
        call.__qualname__ = f"{self._name}.{function}"
        return call

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._functions})

    async def _invoke(self, method: str, body: Body) -> Body:
        """Invoke ``method`` with this client's options."""
        options = self._options
        return await self._peer.invoke(
            method,
            body,
            order_key=options.order_key,
            to=options.to,
            timeout=options.timeout,
            headers=options.headers,
        )

    async def _call(
        self, function: str, method: str, args: Sequence[object], kwargs: Mapping[str, object]
    ) -> Result:
        """Encode one call of ``function``, invoke ``method`` and decode the reply."""
        raise NotImplementedError
