"""The msgpack schema file: TOML text in, a checked ``Service`` definition out.

Theory of operation:

* A schema file is TOML (read with the stdlib ``tomllib``; no code generation). It has one
  ``[service]`` table and optional ``[records.X]``, ``[errors.X]`` and ``[methods.x]`` tables;
  ``docs/schema.md`` is the reference. Every table accepts only the keys the format defines:
  anything else, an unknown type or a misplaced ``none`` raises ``SchemaError`` at load time,
  naming the file and the table.
* Types are small expressions: ``bool int float str bytes any``, ``list[T]``, ``map[K, V]``,
  ``optional[T]`` (or ``T?``), and record names. ``_TypeReader`` compiles them to msgspec
  types; ``int`` is a signed 64-bit integer. ``_Compiler`` turns records into ``Record``
  subclasses (``msgspec.Struct``s: keyword-only, unknown fields rejected), errors into
  ``ServiceError`` subclasses and methods into ``Method``s (``definition.py``).
* Record references are forward references resolved through one registry dict per service,
  stored on each struct class under ``_REGISTRY``. So records may be declared in any order and
  may refer to themselves (trees, linked lists). Defaults are checked once every record exists.

Only ``schema.py`` imports this module.
"""

from __future__ import annotations

import copy
import keyword
import operator
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Annotated, Any, Final, ForwardRef

import msgspec

from callosum_like.errors import SchemaError

from .definition import PUBLIC_MODULE, Method, Namespace, Record, Service, ServiceError, convert

__all__ = ["load", "loads"]

#: The class attribute holding a service's records, for resolving forward references.
_REGISTRY: Final = "_schema_records_"
#: ``int`` is what every msgpack implementation can read: a signed 64-bit integer.
_INT64: Final = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_PRIMITIVES: Final[dict[str, object]] = {
    "bool": bool,
    "int": _INT64,
    "float": float,
    "str": str,
    "bytes": bytes,
    "any": Any,
}
_MAP_KEYS: Final = frozenset({"str", "int", "bytes"})
_TYPE_WORDS: Final = frozenset({*_PRIMITIVES, "none", "list", "map", "optional"})
_TOKENS: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\S")
_TOP_KEYS: Final = frozenset({"service", "records", "errors", "methods"})
_SERVICE_KEYS: Final = frozenset({"name", "doc"})
_FIELD_KEYS: Final = frozenset({"type", "default", "doc"})
_METHOD_KEYS: Final = frozenset({"doc", "args", "result", "errors", "oneway"})


def load(path: str | PathLike[str]) -> Service:
    """Read a schema file (TOML; see ``docs/schema.md``).

    Args:
        path: The file, e.g. ``"idl/kvstore.schema.toml"``.

    Returns:
        The service it describes.

    Raises:
        OSError: The file cannot be read.
        SchemaError: It is not valid TOML or not a valid schema; the message names the
            file and the table.
    """
    source = str(path)
    return loads(Path(path).read_bytes().decode("utf-8"), source=source)


def loads(text: str, *, source: str = "<string>") -> Service:
    """Read a schema from a string; see ``load``.

    Args:
        text: The TOML text.
        source: The name used in error messages and ``Service.source``.

    Raises:
        SchemaError: The text is not valid TOML or not a valid schema.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{source}: not valid TOML: {exc}") from None
    return _Compiler(source, document).service()


def _as_table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: expected a table, got {value!r}")
    return value


def _check_keys(value: object, allowed: frozenset[str], where: str) -> dict[str, Any]:
    table = _as_table(value, where)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SchemaError(
            f"{where}: unknown key `{unknown[0]}` (allowed: {', '.join(sorted(allowed))})"
        )
    return table


def _check_identifier(name: str, where: str, what: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise SchemaError(
            f"{where}: {what} {name!r} must be a Python identifier, not a keyword, "
            "not starting with `_`"
        )
    return name


def _check_str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{where}: expected a string, got {value!r}")
    return value


def _optional(inner: object) -> object:
    return operator.getitem(typing.Optional, inner)


class _TypeReader:
    """Compiles one type expression (``"map[str, list[Entry]]?"``) to a msgspec type."""

    def __init__(self, text: str, where: str, records: frozenset[str]) -> None:
        self._text = text
        self._where = where
        self._records = records
        self._tokens = _TOKENS.findall(text)
        self._pos = 0

    def read(self, *, allow_none: bool) -> object:
        if allow_none and self._tokens == ["none"]:
            return None
        value = self._type()
        if self._pos != len(self._tokens):
            self._fail(f"unexpected `{self._tokens[self._pos]}`")
        return value

    def _type(self) -> object:
        word = self._next()
        if word in ("list", "optional"):
            self._expect("[")
            inner = self._type()
            self._expect("]")
            value = types.GenericAlias(list, (inner,)) if word == "list" else _optional(inner)
        elif word == "map":
            value = self._map()
        elif word in _PRIMITIVES:
            value = _PRIMITIVES[word]
        elif word in self._records:
            value = ForwardRef(f"{_REGISTRY}[{word!r}]")
        else:
            self._fail(f"unknown type `{word}`" if word != "none" else "`none` is only a result")
        while self._peek() == "?":
            self._pos += 1
            value = _optional(value)
        return value

    def _map(self) -> object:
        self._expect("[")
        key = self._next()
        if key not in _MAP_KEYS:
            self._fail(f"map keys must be one of {', '.join(sorted(_MAP_KEYS))}, not `{key}`")
        self._expect(",")
        value = self._type()
        self._expect("]")
        return types.GenericAlias(dict, (_PRIMITIVES[key], value))

    def _peek(self) -> str | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _next(self) -> str:
        token = self._peek()
        if token is None:
            self._fail("unexpected end")
        self._pos += 1
        return token

    def _expect(self, token: str) -> None:
        if self._next() != token:
            self._fail(f"expected `{token}`")

    def _fail(self, problem: str) -> typing.NoReturn:
        raise SchemaError(f"{self._where}: bad type {self._text!r}: {problem}")


_FieldSpec = tuple[str, object] | tuple[str, object, object]


class _Compiler:
    """Turns one parsed TOML document into a ``Service``; every check names file and table."""

    def __init__(self, source: str, document: dict[str, Any]) -> None:
        self._source = source
        self._document = _check_keys(document, _TOP_KEYS, source)
        self._registry: dict[str, type[Record]] = {}
        self._record_names = frozenset(self._table("records"))
        self._defaults: list[tuple[str, object, object]] = []  # (where, type, default)

    def service(self) -> Service:
        where = self._where("service")
        if "service" not in self._document:
            raise SchemaError(f"{self._source}: missing the [service] table")
        table = _check_keys(self._document["service"], _SERVICE_KEYS, where)
        if "name" not in table:
            raise SchemaError(f"{where}: missing `name`")
        name = _check_identifier(_check_str(table["name"], where), where, "the name")
        for record, fields in self._table("records").items():
            self._registry[record] = self._struct(
                record, self._fields(fields, self._where(f"records.{record}"))
            )
        errors = {
            error: self._error(name, error, fields)
            for error, fields in self._table("errors").items()
        }
        methods = {
            method: self._method(method, spec, errors)
            for method, spec in self._table("methods").items()
        }
        self._check_defaults()
        return Service(
            name=name,
            doc=_check_str(table.get("doc", ""), f"{where} doc"),
            methods=types.MappingProxyType(methods),
            records=Namespace("record", self._registry),
            errors=Namespace("error", errors),
            source=self._source,
        )

    def _where(self, table: str) -> str:
        return f"{self._source}: [{table}]"

    def _table(self, key: str) -> dict[str, Any]:
        table = _as_table(self._document.get(key, {}), f"{self._source}: `{key}`")
        for name in table:
            where = self._where(f"{key}.{name}")
            _check_identifier(name, where, "the name")
            if key != "methods" and name in _TYPE_WORDS:
                raise SchemaError(f"{where}: `{name}` is a built-in type name")
            if key == "errors" and name in self._record_names:
                raise SchemaError(f"{where}: `{name}` is already a record")
        return table

    def _type(self, text: object, where: str, *, allow_none: bool = False) -> object:
        reader = _TypeReader(_check_str(text, where), where, self._record_names)
        return reader.read(allow_none=allow_none)

    def _fields(self, table: object, where: str) -> list[_FieldSpec]:
        specs: list[_FieldSpec] = []
        for name, spec in _as_table(table, where).items():
            field_where = f"{where} `{name}`"
            _check_identifier(name, field_where, "field")
            if isinstance(spec, dict):
                spec = _check_keys(spec, _FIELD_KEYS, field_where)
                _check_str(spec.get("doc", ""), field_where)
                if "type" not in spec:
                    raise SchemaError(f"{field_where}: missing `type`")
                kind = self._type(spec["type"], field_where)
            else:
                spec, kind = {}, self._type(spec, field_where)
            specs.append(self._field(name, kind, spec, field_where))
        return specs

    def _field(self, name: str, kind: object, spec: dict[str, Any], where: str) -> _FieldSpec:
        if "default" in spec:
            default = spec["default"]
            self._defaults.append((where, kind, default))
            return (name, kind, msgspec.field(default_factory=lambda: copy.deepcopy(default)))
        if typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind):
            return (name, kind, None)
        return (name, kind)

    def _struct(self, name: str, fields: list[_FieldSpec]) -> type[Record]:
        struct = msgspec.defstruct(
            name,
            fields,
            bases=(Record,),
            namespace={_REGISTRY: self._registry},
            module=PUBLIC_MODULE,
            kw_only=True,  # per class in msgspec: Record's own setting covers no field here
            forbid_unknown_fields=True,
        )
        return typing.cast("type[Record]", struct)

    def _error(self, service: str, name: str, fields: object) -> type[ServiceError]:
        where = self._where(f"errors.{name}")
        specs = self._fields(fields, where)
        reserved = sorted(
            {spec[0] for spec in specs} & {"fields", "fields_type", *dir(ServiceError)}
        )
        if reserved:
            raise SchemaError(f"{where}: field `{reserved[0]}` is reserved by ServiceError")
        namespace = {
            "fields_type": self._struct(f"{name}Fields", specs),
            "__module__": PUBLIC_MODULE,
            "__qualname__": name,
            "__doc__": f"The ``{name}`` error of the {service} schema.",
        }
        return typing.cast("type[ServiceError]", type(name, (ServiceError,), namespace))

    def _method(self, name: str, table: object, errors: Mapping[str, type[ServiceError]]) -> Method:
        where = self._where(f"methods.{name}")
        table = _check_keys(table, _METHOD_KEYS, where)
        args = self._fields(table.get("args", {}), f"{where} args")
        result_text = _check_str(table.get("result", "none"), f"{where} result")
        result = self._type(result_text, f"{where} result", allow_none=True)
        declared = self._declared(table.get("errors", []), errors, where)
        oneway = table.get("oneway", False)
        if not isinstance(oneway, bool):
            raise SchemaError(f"{where}: `oneway` must be true or false")
        if oneway and (result is not None or declared):
            raise SchemaError(f'{where}: a oneway method has result "none" and no errors')
        return Method(
            name=name,
            doc=_check_str(table.get("doc", ""), f"{where} doc"),
            args=tuple(spec[0] for spec in args),
            result=result_text,
            errors=types.MappingProxyType(declared),
            oneway=oneway,
            args_type=self._struct(f"{name}_args", args),
            result_type=self._struct(f"{name}_result", [("result", result)]),
        )

    def _declared(
        self, names: object, errors: Mapping[str, type[ServiceError]], where: str
    ) -> dict[str, type[ServiceError]]:
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise SchemaError(f"{where}: `errors` must be a list of error names")
        unknown = [name for name in names if name not in errors]
        if unknown:
            raise SchemaError(f"{where}: unknown error `{unknown[0]}` (declare it in [errors])")
        return {name: errors[name] for name in names}

    def _check_defaults(self) -> None:
        for where, kind, default in self._defaults:
            struct = self._struct("default", [("default", kind)])
            convert({"default": default}, struct, where, "default")
