"""msgpack schema services over the Peer: ``load`` a schema file, serve it, call it.

Theory of operation:

* ``load(path)`` reads a TOML schema file into a ``Service`` (``schemafile.py``; the format is
  ``docs/schema.md``). Nothing is generated on disk: records are ``Record`` subclasses
  (``msgspec.Struct``s) and errors ``ServiceError`` subclasses, made at run time.
* Method ``m`` of a service served under ``name`` (default: the service's name) is the peer
  method ``"<name>.<m>"``. Its request body is a msgpack map ``{argument: value}``; its
  reply is ``{"result": value}``, or ``{"error": "<Name>", "fields": {...}}`` when the handler
  raised an error the method declares. Plain msgpack, so peers in other languages can speak it.
* Validation happens at each of the four crossings: ``SchemaClient`` checks the arguments
  before sending (``SchemaError`` naming method and field; nothing is sent), ``SchemaServer``
  checks the request body and the handler's result (a bad one makes the handler raise
  ``SchemaError``, which reaches the caller as ``RPCUserError`` whose ``name`` ends in
  ``SchemaError``), and the client checks the reply (``SchemaError``).
* A declared error arrives as the caller's own class of that name, with its fields; any
  other exception of the handler arrives as ``RPCUserError``. ``oneway`` methods return
  ``None`` and report no handler error (it is logged on the server); the caller's await still
  ends when the server has run the handler.

``SchemaServer``/``SchemaClient`` mirror ``thrift.ThriftServer``/``ThriftClient``, and share
their plumbing (``binding.py``): ``attach(peer, ordering=...)``, ``with_options(...)``.
msgspec is optional (the ``schema`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from callosum_like.peer import Peer
from callosum_like.request import Body, Handler, Headers, Request

from .binding import BoundClient, BoundServer, Result, call_handler, check_name
from .binding import CallOptions as CallOptions
from .binding import current_request as current_request
from .definition import Method as Method
from .definition import Namespace as Namespace
from .definition import Record as Record
from .definition import Service as Service
from .definition import ServiceError as ServiceError
from .schemafile import load as load
from .schemafile import loads as loads

__all__ = [
    "load",
    "loads",
    "Service",
    "Method",
    "Record",
    "ServiceError",
    "Namespace",
    "SchemaServer",
    "SchemaClient",
    "CallOptions",
    "current_request",
]

log = logging.getLogger(__name__)

for _public in (Service, Method, Record, ServiceError, Namespace):
    _public.__module__ = __name__  # users meet them here, not in .definition
del _public


def _check_service(service: object) -> Service:
    if not isinstance(service, Service):
        raise TypeError(f"service must be a schema.Service (from schema.load), not {service!r}")
    return service


class SchemaServer(BoundServer):
    """Serves a schema service on peers: ``SchemaServer(service, handler).attach(peer)``.

    Method ``m`` is served as the peer method ``"<name>.<m>"``. The handler's method ``m``
    receives the arguments by name, already validated (records as ``Record`` instances),
    and may be ``def`` or ``async def`` (a ``def`` runs on the event loop). It returns the
    result (records as ``Record``s or maps) or raises a declared error
    (``raise service.errors.KeyNotFound(key=key)``). ``current_request()`` gives it the
    caller's identity, order key and headers.

    Args:
        service: What ``schema.load`` returned.
        handler: An object with one method per schema method.
        name: The method prefix; defaults to ``service.name``.

    Raises:
        TypeError: ``service`` is not a ``Service``, ``name`` not a str, or ``handler`` lacks
            a method for one of the schema methods.
        ValueError: ``name`` is empty.
    """

    def __init__(self, service: Service, handler: object, name: str | None = None) -> None:
        self._service = _check_service(service)
        prefix = service.name if name is None else check_name(name)
        super().__init__(prefix, service.methods, handler)

    @property
    def service(self) -> Service:
        """The service served."""
        return self._service

    def _serve(self, function: str, method: str) -> Handler:
        spec = self._service.methods[function]
        implementation = getattr(self._handler, function)

        async def serve(request: Request) -> Body:
            kwargs = spec.unpack_args(method, request.body)
            try:
                value = await call_handler(request, implementation, (), kwargs)
            except Exception as exc:
                if spec.oneway:
                    log.exception(
                        "oneway %s from %r raised; nobody is told", method, request.peer_id
                    )
                    return None
                if spec.declares(exc):
                    return spec.pack_error(method, exc)
                raise
            return None if spec.oneway else spec.pack_result(method, value)

        serve.__qualname__ = serve.__name__ = f"serve_{function}"
        return serve


class SchemaClient(BoundClient):
    """Calls a remote schema service: ``await SchemaClient(peer, service).m(...)``.

    Each schema method ``m`` is an awaitable method taking the arguments positionally (in
    file order) or by name. It returns the validated result (records as ``Record``
    instances) and raises a declared error as ``service.errors.<Name>``.

    Order keys, timeouts and headers are client options, set here or per call with
    ``with_options``: ``await client.with_options(order_key="k").m(...)``.

    Args:
        peer: The local peer (either side of a connection).
        service: What ``schema.load`` returned for the remote's schema.
        name: The method prefix the remote serves it under; defaults to ``service.name``.
        to: On the bound side, the identity of the connected peer to call.
        order_key: The order key of every call (default: none).
        timeout: Seconds to wait for each reply (default: the peer's ``invoke_timeout``).
        headers: Metadata sent with every call.

    Raises:
        TypeError: A wrong argument type.
        ValueError: An empty ``name`` or a negative ``timeout``.

    The awaitables raise ``SchemaError`` before sending when the arguments do not match the
    schema, the declared errors, ``RPCUserError`` for other handler exceptions (its ``name``
    ends in ``SchemaError`` when the server rejected the call or its own result),
    ``SchemaError`` for a malformed reply, and the errors of ``Peer.invoke``.
    """

    def __init__(
        self,
        peer: Peer,
        service: Service,
        name: str | None = None,
        to: str | None = None,
        *,
        order_key: str | None = None,
        timeout: float | None = None,
        headers: Headers | None = None,
    ) -> None:
        self._service = _check_service(service)
        prefix = service.name if name is None else check_name(name)
        options = CallOptions(order_key=order_key, to=to, timeout=timeout, headers=headers)
        super().__init__(peer, prefix, service.methods, options)

    @property
    def service(self) -> Service:
        """The service called."""
        return self._service

    async def _call(
        self, function: str, method: str, args: Sequence[object], kwargs: Mapping[str, object]
    ) -> Result:
        spec: Method = self._service.methods[function]
        reply = await self._invoke(method, spec.pack_args(method, args, kwargs))
        return None if spec.oneway else spec.unpack_reply(method, reply)
