"""Thrift services over the Peer, with thriftpy2 and its binary protocol.

Theory of operation:

* A thriftpy2 service class (from ``thriftpy2.load("x.thrift")``) has, for every function
  ``f``, the generated structs ``f_args`` (the arguments, by field id) and ``f_result``
  (field 0 ``success`` plus one field per declared exception). ``_Function`` captures them.
* Function ``f`` of a service served under ``name`` (default: the service's own name) is the
  peer method ``"<name>.<f>"``. The request body is the ``f_args`` struct in the Thrift binary
  protocol (bytes, no message envelope); the reply body is the ``f_result`` struct likewise.
  Sequence ids, message types and multiplexing are the Peer's business, not Thrift's.
* A declared exception is an ordinary reply: the server sets its field in ``f_result`` and
  the client raises it, so it arrives as the same class with the same fields. Anything else
  a handler raises propagates to the Peer, and the caller gets ``RPCUserError``.
* ``oneway`` functions have no result and report no handler error: the server logs the error
  and answers ``None``. The caller's await still returns once the server has run the handler,
  so delivery failures (timeouts, disconnects, unknown method) are still reported.
* Both directions are checked: a call whose arguments cannot be encoded raises
  ``SchemaError`` before anything is sent; a body that is not a well-formed ``f_args`` struct
  makes the server handler raise ``SchemaError`` (the caller gets ``RPCUserError``); a reply
  that is not a well-formed ``f_result`` raises ``SchemaError`` on the caller.
* Decoding reads through a buffered transport over ``io.BytesIO``, which raises on a
  truncated body; thriftpy2's in-memory buffer would silently read zeros past the end.

thriftpy2 is optional (the ``thrift`` extra): importing this module without it raises an
``ImportError`` that says what to install. Nothing in callosum_like imports this module.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

try:
    from thriftpy2.protocol import TBinaryProtocolFactory
    from thriftpy2.transport import TBufferedTransport, TMemoryBuffer
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "callosum_like.upper.thrift needs thriftpy2, which is not installed; "
        "install the `thrift` extra: pip install 'callosum-like[thrift]'"
    ) from exc

from callosum_like.errors import SchemaError
from callosum_like.peer import Peer
from callosum_like.request import Body, Handler, Headers, Request

from .binding import BoundClient, BoundServer, Result, call_handler, check_name
from .binding import CallOptions as CallOptions
from .binding import current_request as current_request

__all__ = ["ThriftServer", "ThriftClient", "CallOptions", "current_request"]

log = logging.getLogger(__name__)

#: thriftpy2's classes, seen as ``Any``: thriftpy2 ships ``py.typed`` but leaves these untyped.
_MemoryBuffer: Any = TMemoryBuffer
_BufferedTransport: Any = TBufferedTransport
#: The Thrift binary protocol (thriftpy2's Cython implementation when it is available).
_PROTOCOL: Final[Any] = TBinaryProtocolFactory()  # type: ignore[no-untyped-call]

#: A thriftpy2 generated class (a service, a struct, an exception); thriftpy2 has no types.
ThriftClass = Any


def _encode(payload: Any) -> bytes:
    """Write a thriftpy2 struct in the binary protocol."""
    buffer = _MemoryBuffer()
    payload.write(_PROTOCOL.get_protocol(buffer))
    return bytes(buffer.getvalue())


def _decode(struct: ThriftClass, data: bytes) -> Any:
    """Read a thriftpy2 struct of class ``struct`` from binary-protocol bytes.

    Raises:
        Exception: Whatever thriftpy2 raises on malformed input (end of file, bad sizes).
    """
    payload = struct()
    payload.read(_PROTOCOL.get_protocol(_BufferedTransport(io.BytesIO(data))))
    return payload


@dataclasses.dataclass(frozen=True, slots=True)
class _Function:
    """The generated structs of one Thrift function and how to (de)code its bodies."""

    name: str
    args: ThriftClass  # the f_args struct class
    result: ThriftClass  # the f_result struct class
    arg_names: tuple[str, ...]  # in declaration order, the order of positional arguments
    required: tuple[str, ...]
    throws: tuple[tuple[str, type[Exception]], ...]  # (result field, exception class)
    oneway: bool
    void: bool

    @classmethod
    def of(cls, service: ThriftClass, name: str) -> _Function:
        args = getattr(service, f"{name}_args")
        result = getattr(service, f"{name}_result")
        fields = list(args.thrift_spec.values())  # declaration order, as thriftpy2 binds
        return cls(
            name=name,
            args=args,
            result=result,
            arg_names=tuple(spec[1] for spec in fields),
            required=tuple(spec[1] for spec in fields if spec[-1] is True),
            throws=tuple(
                (spec[1], spec[2])
                for fid, spec in sorted(result.thrift_spec.items())
                if fid != 0 and spec[1] != "success"
            ),
            oneway=bool(result.oneway),
            void=0 not in result.thrift_spec,
        )

    # -- the calling side ----------------------------------------------------------------------

    def encode_args(
        self, method: str, args: Sequence[object], kwargs: Mapping[str, object]
    ) -> bytes:
        """Bind a call's arguments like thriftpy2 does and encode them as ``f_args``.

        Raises:
            SchemaError: Too many, unknown, missing or unencodable arguments.
        """
        if len(args) > len(self.arg_names):
            raise SchemaError(
                f"{method}: takes {len(self.arg_names)} arguments, {len(args)} were given"
            )
        values = dict(zip(self.arg_names, args, strict=False))
        for key, value in kwargs.items():
            if key not in self.arg_names:
                raise SchemaError(f"{method}: unknown argument {key!r}")
            if key in values:
                raise SchemaError(f"{method}: argument {key!r} given twice")
            values[key] = value
        self._check_required(method, values)
        try:
            return _encode(self.args(**values))
        except Exception as exc:
            raise SchemaError(f"{method}: cannot encode the arguments: {exc}") from None

    def decode_result(self, method: str, reply: Body) -> Result:
        """Return the result of a reply, or raise the declared exception it carries.

        Raises:
            Exception: The declared exception that the remote handler raised.
            SchemaError: The reply is not a well-formed ``f_result`` struct.
        """
        result = self._read(method, self.result, reply, "reply")
        for field, _ in self.throws:
            error = getattr(result, field)
            if error is not None:
                raise error
        if self.void:
            return None
        if result.success is None:
            raise SchemaError(f"{method}: the reply carries neither a result nor an exception")
        return result.success

    # -- the serving side ----------------------------------------------------------------------

    def decode_args(self, method: str, body: Body) -> list[object]:
        """Decode a request body into the positional arguments of the handler method.

        Raises:
            SchemaError: The body is not a well-formed ``f_args`` struct.
        """
        payload = self._read(method, self.args, body, "request")
        values = {name: getattr(payload, name) for name in self.arg_names}
        self._check_required(method, values)
        return list(values.values())

    def encode_outcome(self, method: str, value: object, error: Exception | None) -> bytes:
        """Encode what the handler returned, or the declared exception it raised.

        Raises:
            SchemaError: A non-void handler returned ``None``, or its value cannot be encoded.
        """
        result = self.result()
        if error is not None:
            field = next(field for field, kind in self.throws if isinstance(error, kind))
            setattr(result, field, error)
        elif not self.void:
            if value is None:
                raise SchemaError(f"{method}: the handler returned None, which Thrift cannot send")
            result.success = value
        try:
            return _encode(result)
        except Exception as exc:
            raise SchemaError(f"{method}: cannot encode the handler's result: {exc}") from None

    def declared(self, error: Exception) -> bool:
        """Whether ``error`` is one of the exceptions this function declares."""
        return any(isinstance(error, kind) for _, kind in self.throws)

    # -- helpers -------------------------------------------------------------------------------

    def _check_required(self, method: str, values: Mapping[str, object]) -> None:
        missing = [name for name in self.required if values.get(name) is None]
        if missing:
            raise SchemaError(f"{method}: missing required argument {missing[0]!r}")

    @staticmethod
    def _read(method: str, struct: ThriftClass, body: Body, what: str) -> Any:
        if not isinstance(body, bytes):
            raise SchemaError(
                f"{method}: the {what} body must be a binary Thrift {struct.__name__} struct "
                f"(bytes), not {type(body).__name__}"
            )
        try:
            return _decode(struct, body)
        except Exception as exc:
            raise SchemaError(
                f"{method}: the {what} body is not a binary Thrift {struct.__name__} struct: "
                f"{exc!r}"
            ) from None


def _functions_of(service: object) -> dict[str, _Function]:
    names = getattr(service, "thrift_services", None)
    if not isinstance(service, type) or not isinstance(names, list):
        raise TypeError(
            "service must be a thriftpy2 service class (e.g. thriftpy2.load(path).MyService), "
            f"not {service!r}"
        )
    return {name: _Function.of(service, name) for name in names}


class ThriftServer(BoundServer):
    """Serves a Thrift service on peers: ``ThriftServer(service, handler).attach(peer)``.

    Function ``f`` is served as the peer method ``"<name>.<f>"``. The handler's method ``f``
    receives the arguments positionally, in IDL order, and may be ``def`` or ``async def``
    (a ``def`` runs on the event loop, so keep it quick).

    Args:
        service: A thriftpy2 service class, e.g. ``thriftpy2.load("idl/simple.thrift").Simple``.
        handler: An object with one method per Thrift function.
        name: The method prefix; defaults to the service's name (``"Simple"``).

    Raises:
        TypeError: ``service`` is not a thriftpy2 service, ``name`` not a str, or ``handler``
            lacks a method for one of the functions.
        ValueError: ``name`` is empty.
    """

    def __init__(self, service: ThriftClass, handler: object, name: str | None = None) -> None:
        self._service_functions = _functions_of(service)
        prefix = service.__name__ if name is None else check_name(name)
        super().__init__(prefix, self._service_functions, handler)

    def _serve(self, function: str, method: str) -> Handler:
        spec = self._service_functions[function]
        implementation = getattr(self._handler, function)

        async def serve(request: Request) -> Body:
            args = spec.decode_args(method, request.body)
            try:
                value = await call_handler(request, implementation, args, {})
            except Exception as exc:
                if spec.oneway:
                    log.exception(
                        "oneway %s from %r raised; nobody is told", method, request.peer_id
                    )
                    return None
                if spec.declared(exc):
                    return spec.encode_outcome(method, None, exc)
                raise
            return None if spec.oneway else spec.encode_outcome(method, value, None)

        serve.__qualname__ = serve.__name__ = f"serve_{function}"
        return serve


class ThriftClient(BoundClient):
    """Calls a remote Thrift service: ``await ThriftClient(peer, service).f(...)``.

    Each Thrift function ``f`` is an awaitable method taking the arguments positionally (in
    IDL order) or by name. It returns the result, raises a declared exception as the same
    class with its fields, and returns ``None`` for ``void`` and ``oneway`` functions.

    Order keys, timeouts and headers are client options, set here or per call with
    ``with_options``: ``await client.with_options(order_key="k").f(...)``.

    Args:
        peer: The local peer (either side of a connection).
        service: The thriftpy2 service class the remote serves.
        name: The method prefix the remote serves it under; defaults to the service's name.
        to: On the bound side, the identity of the connected peer to call.
        order_key: The order key of every call (default: none).
        timeout: Seconds to wait for each reply (default: the peer's ``invoke_timeout``).
        headers: Metadata sent with every call.

    Raises:
        TypeError: A wrong argument type (``service`` not a thriftpy2 service, ...).
        ValueError: An empty ``name`` or a negative ``timeout``.

    The awaitables raise ``SchemaError`` (before sending) for arguments that do not fit the
    IDL, the declared exceptions, ``RPCUserError`` for any other handler exception, and the
    errors of ``Peer.invoke``.
    """

    def __init__(
        self,
        peer: Peer,
        service: ThriftClass,
        name: str | None = None,
        to: str | None = None,
        *,
        order_key: str | None = None,
        timeout: float | None = None,
        headers: Headers | None = None,
    ) -> None:
        self._service_functions = _functions_of(service)
        prefix = service.__name__ if name is None else check_name(name)
        options = CallOptions(order_key=order_key, to=to, timeout=timeout, headers=headers)
        super().__init__(peer, prefix, self._service_functions, options)

    async def _call(
        self, function: str, method: str, args: Sequence[object], kwargs: Mapping[str, object]
    ) -> Result:
        spec = self._service_functions[function]
        reply = await self._invoke(method, spec.encode_args(method, args, kwargs))
        return None if spec.oneway else spec.decode_result(method, reply)
