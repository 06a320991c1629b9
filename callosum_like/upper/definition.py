"""The definition of a msgpack schema service, and how its bodies map onto msgpack.

Theory of operation:

* A ``Service`` holds its ``Method``s, its record types (``Record`` subclasses, which are
  msgspec structs) and its error classes (``ServiceError`` subclasses). ``schemafile.py``
  builds them from a file; nothing here knows about TOML.
* Every method has two structs: its arguments (one field per argument) and its result (one
  field, ``result``). Validation is therefore always "turn the values into plain msgpack
  values (``to_plain``), then convert them into a struct (``convert``)". The conversion is
  msgspec's strict one (no str-to-int or base64 guessing), and its error path names the field.
  Going through plain values first also re-checks structs that were built by hand, which
  msgspec does not validate on construction.
* The wire form of a call body is a map ``{argument: value}``; of a reply,
  ``{"result": value}`` or ``{"error": name, "fields": {...}}`` for a declared error.
  ``Method`` owns both directions of that mapping for both sides; ``schema.py`` moves bodies.
  A declared error is recognised by its class *name*, so errors from another ``load`` of the
  same file (the handler's own, say) count, and are re-checked against this declaration.

Imported by ``schemafile.py`` and ``schema.py`` only. msgspec is optional (the ``schema``
extra): importing without it raises an ``ImportError`` that says what to install.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, TypeGuard, TypeVar

try:
    import msgspec
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "callosum_like.upper.schema needs msgspec, which is not installed; "
        "install the `schema` extra: pip install 'callosum-like[schema]'"
    ) from exc

from callosum_like.errors import RPCError, SchemaError
from callosum_like.request import Body

__all__ = [
    "Service",
    "Method",
    "Record",
    "ServiceError",
    "Namespace",
    "to_plain",
    "convert",
    "PUBLIC_MODULE",
]

T = TypeVar("T")

#: The module that the generated classes claim (the public one).
PUBLIC_MODULE: Final = "callosum_like.upper.schema"
#: msgpack carries these natively; ``to_builtins`` must not base64 them.
_BINARY: Final = (bytes, bytearray, memoryview)


def _explain(exc: msgspec.ValidationError) -> str:
    """Return msgspec's message with its ``$``-rooted paths made relative (``$.key`` -> ``key``)."""
    return str(exc).replace("`$.", "`").replace(" - at `$`", "")


def to_plain(values: Mapping[str, object], label: str, what: str) -> dict[str, Body]:
    """Turn the values of a call or result into plain msgpack values (records to maps).

    Raises:
        SchemaError: A value is of a type msgpack cannot carry; names the field.
    """
    plain: dict[str, Body] = {}
    for name, value in values.items():
        try:
            plain[name] = msgspec.to_builtins(value, builtin_types=_BINARY)
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{label}: bad {what}: `{name}`: {exc}") from None
    return plain


def convert(plain: Body, struct: type[T], label: str, what: str) -> T:
    """Validate a plain msgpack value against ``struct`` and build it.

    Raises:
        SchemaError: The value does not match; the message names the field.
    """
    try:
        return msgspec.convert(plain, struct, builtin_types=_BINARY)  # no base64 guessing
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{label}: bad {what}: {_explain(exc)}") from None


class Record(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of the record types a schema file declares (``msgspec.Struct`` subclasses).

    ``schema.load`` makes one subclass per ``[records.X]`` table. Construct them with
    keywords (``Entry(key="k", value=b"v")``); like every msgspec struct they are not checked
    on construction, but whatever is sent is. They compare by value; ``msgspec.structs.asdict``
    turns one into a dict.
    """

    if TYPE_CHECKING:  # fields are made at run time; let type checkers accept any of them

        def __getattr__(self, name: str) -> Any: ...


class Namespace(Mapping[str, T], Generic[T]):
    """A read-only mapping whose items are also attributes: ``service.records.Entry``."""

    __slots__ = ("_items", "_kind")

    def __init__(self, kind: str, items: Mapping[str, T]) -> None:
        self._kind = kind
        self._items = dict(items)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getattr__(self, name: str) -> T:
        if name.startswith("_"):  # not set yet (copy, pickle) or private
            raise AttributeError(name)
        if name not in self._items:
            raise AttributeError(f"no {self._kind} named {name!r}")
        return self._items[name]

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._items})

    def __repr__(self) -> str:
        return f"<{self._kind}s: {', '.join(self._items)}>"


class ServiceError(RPCError):
    """Base of the errors a schema file declares; ``load`` makes one subclass per ``[errors.X]``.

    A handler raises one (``raise svc.errors.KeyNotFound(key=key)``); when the method declares
    it, the caller gets the same class with the same fields. Fields are attributes, and
    ``fields`` holds them all.

    Args:
        **fields: The declared fields.

    Raises:
        SchemaError: The fields do not match the declaration.
        TypeError: ``ServiceError`` itself was instantiated (use a declared subclass).
    """

    #: The struct describing the fields of this error (set on each generated subclass).
    fields_type: ClassVar[type[Record]]

    def __init__(self, **fields: object) -> None:
        kind = type(self)
        if kind is ServiceError:
            raise TypeError("raise a subclass made by schema.load, not ServiceError itself")
        plain = to_plain(fields, kind.__name__, "fields")
        record = convert(plain, kind.fields_type, kind.__name__, "fields")
        values = msgspec.structs.asdict(record)
        super().__init__(*values.values())
        self.fields: dict[str, Any] = values
        for name, value in values.items():
            setattr(self, name, value)

    if TYPE_CHECKING:  # fields are made at run time; let type checkers accept any of them

        def __getattr__(self, name: str) -> Any: ...

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.fields.items())
        return f"{type(self).__name__}({fields})"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Method:
    """One method of a schema service and the mapping of its bodies.

    Attributes:
        name: The method name (the peer method is ``"<prefix>.<name>"``).
        doc: Its ``doc`` text.
        args: The argument names, in the order positional arguments bind to them.
        result: The result type, as written in the file.
        errors: The errors it declares, by name.
        oneway: Whether it has no result and reports no error.
        args_type: The struct of its arguments (one field per argument).
        result_type: The struct of its result (one field, ``result``).
    """

    name: str
    doc: str
    args: tuple[str, ...]
    result: str
    errors: Mapping[str, type[ServiceError]]
    oneway: bool
    args_type: type[Record]
    result_type: type[Record]

    def pack_args(
        self, label: str, args: Sequence[object], kwargs: Mapping[str, object]
    ) -> dict[str, Body]:
        """Bind and check a call's arguments; return the request body (calling side).

        Raises:
            SchemaError: Too many, unknown, missing or ill-typed arguments.
        """
        if len(args) > len(self.args):
            raise SchemaError(f"{label}: takes {len(self.args)} arguments, {len(args)} were given")
        values: dict[str, object] = dict(zip(self.args, args, strict=False))
        for name, value in kwargs.items():
            if name in values:
                raise SchemaError(f"{label}: argument `{name}` given twice")
            values[name] = value
        plain = to_plain(values, label, "arguments")
        convert(plain, self.args_type, label, "arguments")
        return plain

    def unpack_args(self, label: str, body: Body) -> dict[str, object]:
        """Check a request body; return the handler's keyword arguments (serving side).

        Raises:
            SchemaError: The body does not match the arguments.
        """
        struct = convert(body, self.args_type, label, "arguments")
        return {name: getattr(struct, name) for name in self.args}

    def pack_result(self, label: str, value: object) -> Body:
        """Check the handler's return value; return the reply body (serving side).

        Raises:
            SchemaError: The value does not match the result type.
        """
        plain = to_plain({"result": value}, label, "result")
        convert(plain, self.result_type, label, "result")
        return plain

    def declares(self, error: BaseException) -> TypeGuard[ServiceError]:
        """Whether ``error`` is a ``ServiceError`` this method declares (by name)."""
        return isinstance(error, ServiceError) and type(error).__name__ in self.errors

    def pack_error(self, label: str, error: ServiceError) -> Body:
        """Return the reply body that carries a declared ``error`` (serving side).

        Raises:
            SchemaError: Its fields do not match this service's declaration of it.
        """
        name = type(error).__name__
        plain = to_plain(error.fields, label, f"error {name}")
        convert(plain, self.errors[name].fields_type, label, f"error {name}")
        return {"error": name, "fields": plain}

    def unpack_reply(self, label: str, body: Body) -> object:
        """Return the result a reply carries, or raise the declared error (calling side).

        Raises:
            ServiceError: The declared error the remote handler raised.
            SchemaError: The reply is malformed or its result does not match.
        """
        if isinstance(body, dict) and body.keys() == {"result"}:
            struct = convert(body, self.result_type, label, "result")
            return msgspec.structs.asdict(struct)["result"]
        if isinstance(body, dict) and body.keys() == {"error", "fields"}:
            raise self._declared_error(label, body["error"], body["fields"])
        raise SchemaError(
            f"{label}: malformed reply: expected a map with `result`, or `error` and "
            f"`fields`; got {type(body).__name__}"
        )

    def _declared_error(self, label: str, name: Body, fields: Body) -> ServiceError:
        kind = self.errors.get(name) if isinstance(name, str) else None
        if kind is None:
            raise SchemaError(f"{label}: the reply carries an undeclared error {name!r}")
        if not isinstance(fields, dict) or not all(isinstance(key, str) for key in fields):
            raise SchemaError(f"{label}: malformed fields of error {name}: {fields!r}")
        error = kind(**fields)
        error.add_note(f"raised by the remote handler of {label}")
        return error


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Service:
    """A service described by a schema file (what ``schema.load`` returns).

    Attributes:
        name: The service name, the default method prefix.
        doc: Its ``doc`` text.
        methods: Its methods, by name, in file order.
        records: Its record types (``Record`` subclasses, so ``msgspec.Struct``s), by name.
        errors: Its error classes (``ServiceError`` subclasses), by name.
        source: Where it was read from (a path, or ``"<string>"``).
    """

    name: str
    doc: str
    methods: Mapping[str, Method]
    records: Namespace[type[Record]]
    errors: Namespace[type[ServiceError]]
    source: str

    def __repr__(self) -> str:
        return f"<Service {self.name} ({', '.join(self.methods)}) from {self.source}>"
