"""Message <-> frames, with no I/O.

Theory of operation: every message is one *header* frame, plus one *body* frame for the
kinds that carry an application body (``Call``, ``Result``, ``StreamItem``). The header is a
msgpack array ``[version, kind, flags, field...]`` with the fields in the order the message
class declares them (``body`` excluded). The body frame is the packed msgpack body, snappy
compressed when flag bit 0 is set. docs/PROTOCOL.md is the normative description.

Optional trailing fields (``Call.target`` and ``Call.origin``, added for federation, and
``Hello.token``, added for several links per identity) are left
out of the header while they are ``None``, so a message that does not use them has exactly the
bytes it had before they existed, and peers that predate them still understand it.

``decode`` is the only door from the network into the protocol: whatever the bytes, it returns
a well-typed message or raises ``ProtocolError`` (and only that). Every size it accepts is
bounded: the header by ``MAX_HEADER_SIZE``, the body (compressed and decompressed) by the
caller's ``max_body_size``. A body over that limit raises ``OversizeBodyError``, which still
carries the header so that the caller of an oversize call can be told.

Callers: ``session``/``peer`` (encode/decode), ``dispatch`` (pack/unpack bodies).
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn, TypeAlias, cast

import cramjam
import msgpack

from ..errors import ProtocolError
from . import messages as m

__all__ = [
    "Frame",
    "MAX_HEADER_SIZE",
    "COMPRESS_THRESHOLD",
    "FLAG_COMPRESSED",
    "FLAG_CHUNKED",
    "OversizeBodyError",
    "ChunkedHead",
    "encode",
    "encode_head",
    "decode",
    "pack_body",
    "unpack_body",
    "bin_value_parts",
    "bin_value_size",
    "BIN_HEADER_SIZE",
]

#: What the codec accepts as a frame: transports hand over bytes or zero-copy views.
Frame: TypeAlias = bytes | bytearray | memoryview

#: Headers hold names, ids and at most a traceback (which we truncate to a quarter of this);
#: a megabyte is far beyond any legitimate header and bounds what garbage can make us parse.
MAX_HEADER_SIZE: Final = 1 << 20
#: Bodies at least this large are snappy-compressed when compression is on. Below it, the
#: call overhead of compressing costs more than the bytes it saves on loopback and LANs.
COMPRESS_THRESHOLD: Final = 4096
FLAG_COMPRESSED: Final = 0x01
#: The message's body follows as ``Chunk`` messages; its header ends with two extra fields,
#: the transfer id and the body's size (see ``ChunkedHead``).
FLAG_CHUNKED: Final = 0x02
#: Bytes of a large body compressed as a sample to decide whether compressing it pays.
COMPRESS_PROBE_SIZE: Final = 16 * 1024
#: The sample must shrink to this fraction of its size, or the body is sent as it is.
COMPRESS_MIN_GAIN: Final = 0.9

_KNOWN_FLAGS: Final = FLAG_COMPRESSED | FLAG_CHUNKED
#: ``bytes`` bodies from this size on are packed by ``pack_body`` itself (msgpack's bin 32).
_DIRECT_BIN: Final = 1 << 16
_MAX_BIN: Final = 2**32 - 1
_BIN32: Final = b"\xc6"
#: ``bytes`` bodies shorter than this are packed by ``pack_body`` itself (msgpack's bin 8,
#: whose headers these are by length): half the cost of a call into msgpack.
_SMALL_BIN: Final = 256
_BIN8_HEADERS: Final = tuple(bytes((0xC4, size)) for size in range(_SMALL_BIN))
#: Bytes in the header of a ``bin 32`` value (its type byte and its length).
BIN_HEADER_SIZE: Final = 5

#: The buffer each thread's msgpack ``Packer`` starts with; one that packed more than this
#: is replaced, so that one large body does not keep its buffer for the life of the thread.
PACKER_BUFFER: Final = 64 * 1024


class _Packer(threading.local):
    """A msgpack ``Packer`` per thread, reused.

    ``msgpack.packb`` builds a ``Packer`` with a 256 KiB buffer for every call: 350 ns for a
    message header, where reusing one takes 180 ns. A header or body is packed several times
    per RPC. One per thread, because a ``Packer`` is not safe to share between threads.
    """

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        """Start again with a buffer of ``PACKER_BUFFER`` bytes (let a grown one go)."""
        #: The ``Packer``'s own ``pack``, for a caller that checks the size itself (or
        #: packs only small values): ``pack`` without this object's frame.
        self.pack: Callable[[Any], bytes] = msgpack.Packer(buf_size=PACKER_BUFFER).pack

    def __call__(self, value: Any) -> bytes:
        """``msgpack.packb(value)``; raises what it raises."""
        packed = self.pack(value)
        if len(packed) > PACKER_BUFFER:
            self.renew()  # let the grown buffer go
        return packed


_pack = _Packer()
_unpackb = msgpack.unpackb

_OptStr = (str, type(None))
_OptNum = (float, int, type(None))
_Int = (int,)
_Str = (str,)
_Bool = (bool,)
_OptDict = (dict, type(None))

# Per class: the header fields in order, with the types each may hold on the wire.
_FIELD_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "identity": _Str,
    "assigned": _Str,
    "max_body_size": _Int,
    "id": _Int,
    "method": _Str,
    "order_key": _OptStr,
    "headers": _OptDict,
    "timeout": _OptNum,
    "stream": _Bool,
    "upload": _Bool,
    "name": _Str,
    "repr": _Str,
    "traceback": _Str,
    "code": _Int,
    "message": _Str,
    "reason": _Str,
    "amount": _Int,
    "transfer": _Int,
    "target": _OptStr,
    "origin": _OptStr,
    "peer": _Str,
    "token": _OptStr,
    "session": _OptStr,
    "received": (int, type(None)),
    "seq": _Int,
}
#: Fields that hold a route (``a/b/c``); besides their type, their syntax is checked.
_ROUTE_FIELDS: Final = ("target", "origin", "peer")
#: Fields that may be left out at the end of a header when they are ``None``; they must come
#: last in their class.
_OPTIONAL_TRAILING: Final = frozenset({"target", "origin", "token", "session", "received"})
_CLASSES: Final[tuple[type[m.Message], ...]] = m.MESSAGE_CLASSES


#: The types of a header's first three elements (version, kind, flags) once checked.
_PREFIX: Final = (int, int, int)


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    cls: type[m.Message]
    fields: tuple[str, ...]
    types: tuple[tuple[type, ...], ...]
    has_body: bool
    required: int  # header fields before the optional trailing ones
    values: Callable[[m.Message], tuple[Any, ...]]  # the header fields of a message, in order
    routes: tuple[int, ...]  # the places of its fields that hold a route, in the header
    timeout: int | None  # the place of its ``timeout`` in the header, if it has one
    headers: int | None  # the place of its ``headers`` in the header, if it has them
    #: The types of every header it may have (version, kind and flags, then its fields,
    #: with or without the optional trailing ones), each with whether the values must be
    #: checked beyond their types (a route, a timeout, headers that are not ``None``).
    signatures: dict[tuple[type, ...], bool]
    #: ``make(body, *header)``: the message of a header whose signature is one of its own
    #: (the body is ignored by kinds without one).
    make: Callable[..., m.Message]


def _layout(cls: type[m.Message]) -> _Layout:
    names = [f.name for f in dataclasses.fields(cls)]
    header = tuple(n for n in names if n != "body")
    required = len(header)
    while required and header[required - 1] in _OPTIONAL_TRAILING:
        required -= 1
    assert not _OPTIONAL_TRAILING & set(header[:required]), f"{cls}: optional fields go last"
    types = tuple(_FIELD_TYPES[n] for n in header)
    values: Callable[[Any], tuple[Any, ...]]
    if len(header) >= 2:
        values = operator.attrgetter(*header)  # a tuple of them
    else:  # attrgetter would need a name, and return the value itself
        one = operator.attrgetter(*header) if header else None
        values = lambda msg: () if one is None else (one(msg),)  # noqa: E731
    place = {name: 3 + i for i, name in enumerate(header)}
    routes = tuple(place[n] for n in header if n in _ROUTE_FIELDS)
    checked = [place[n] for n in header if n in _ROUTE_FIELDS or n in ("timeout", "headers")]
    signatures = {
        _PREFIX + signature: any(
            signature[i - 3] is not type(None) for i in checked if i - 3 < len(signature)
        )
        for length in range(required, len(header) + 1)
        for signature in itertools.product(*types[:length])
    }
    return _Layout(
        cls,
        header,
        types,
        "body" in names,
        required,
        values,
        routes,
        place.get("timeout"),
        place.get("headers"),
        signatures,
        _maker(cls, header, required, "body" in names),
    )


def _maker(
    cls: type[m.Message], header: tuple[str, ...], required: int, has_body: bool
) -> Callable[..., m.Message]:
    """``make(body, version, kind, flags, *fields)``: a message of ``cls``, in one call.

    A message's ``__init__`` takes its fields by keyword; building its arguments as a dict
    for every message decoded cost as much as the rest of the header's decoding. This
    writes the fields straight into a new instance, as that ``__init__`` would (every
    field is a plain slot; the optional trailing ones default to ``None``). Generated once
    per class, like the ``__init__`` of a dataclass; the names are the class's own fields.
    """
    params = [f"_{name}" for name in header]
    params[required:] = [f"{p}=None" for p in params[required:]]
    stores = [f" msg.{name} = _{name}" for name in header]
    if has_body:
        stores.append(" msg.body = body")
    source = (
        f"def make({', '.join(['body', '_version', '_kind', '_flags', *params])}):\n"
        " msg = new(cls)\n" + "\n".join(stores) + "\n return msg\n"
    )
    space: dict[str, Any] = {"new": object.__new__, "cls": cls}
    exec(source, space)  # our own field names only (see the doc)
    make: Callable[..., m.Message] = space["make"]
    return make


_VERSION: Final = m.PROTOCOL_VERSION
_CALL: Final = int(m.MessageKind.CALL)
_RESULT: Final = int(m.MessageKind.RESULT)
_BY_KIND: Final[dict[int, _Layout]] = {int(c.KIND): _layout(c) for c in _CLASSES}
_BY_CLASS: Final[dict[type, _Layout]] = {lay.cls: lay for lay in _BY_KIND.values()}


@dataclasses.dataclass(frozen=True, slots=True)
class ChunkedHead:
    """The head of a message whose body travels as ``Chunk`` messages of ``transfer``.

    Attributes:
        message: The message, with an empty body.
        transfer: The sender's id of the transfer; its ``Chunk`` messages name it.
        size: The size of the whole (packed, uncompressed) body in bytes.
    """

    message: m.Message
    transfer: int
    size: int


class OversizeBodyError(ProtocolError):
    """A body frame (or its decompressed size) exceeds ``max_body_size``.

    Args:
        message: The decoded message with an empty body, so the caller can be answered.
        size: The size that was refused, in bytes.
    """

    def __init__(self, message: m.Message, size: int) -> None:
        super().__init__(message, size)
        self.message = message
        self.size = size


def pack_body(value: Any) -> m.PackedBody:
    """Pack an application body.

    A ``bytes`` value of 64 KiB or more is not copied: it becomes a ``LargeBody`` of the
    ``bin 32`` header msgpack would write and the value itself (msgpack would copy the bytes
    into its own buffer, grown to twice their size, and then copy that buffer out).

    Raises:
        TypeError: ``value`` holds something msgpack cannot represent.
    """
    if type(value) is bytes:
        size = len(value)
        if size < _SMALL_BIN:  # what msgpack writes, without a call into it
            return _BIN8_HEADERS[size] + value
        if _DIRECT_BIN <= size <= _MAX_BIN:
            return m.LargeBody((_BIN32 + size.to_bytes(4, "big"), value))
    try:
        packed = _pack.pack(value)  # ``_pack(value)``, inline: the hot path
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"body is not msgpack-serializable: {exc}") from None
    if len(packed) > PACKER_BUFFER:
        _pack.renew()  # let the grown buffer go
    return packed


def bin_value_size(prefix: Frame) -> int | None:
    """The length of the ``bin 32`` value that ``prefix`` starts with; None if it does not.

    ``prefix`` is the start of a packed body (at least ``BIN_HEADER_SIZE`` bytes of it).
    """
    if len(prefix) < BIN_HEADER_SIZE or prefix[0] != _BIN32[0]:
        return None
    return int.from_bytes(prefix[1:BIN_HEADER_SIZE], "big")


def bin_value_parts(body: m.LargeBody) -> list[bytes] | None:
    """The pieces of the value, when ``body`` is exactly one msgpack ``bin 32`` value.

    That is how ``pack_body`` packs every large ``bytes`` value; the value is then these
    pieces joined, with nothing to unpack. None for any other body (also when the header
    is split over two pieces: the body is then unpacked the general way).
    """
    first = body.parts[0]
    if bin_value_size(first) != len(body) - BIN_HEADER_SIZE:
        return None
    head = first[BIN_HEADER_SIZE:]
    return [head, *body.parts[1:]] if head else list(body.parts[1:])


def unpack_body(data: Frame | m.LargeBody) -> Any:
    """Unpack an application body (a ``LargeBody`` is joined here, on the caller's thread).

    Raises:
        ProtocolError: ``data`` is not exactly one msgpack value.
    """
    if type(data) is m.LargeBody:
        payload = bin_value_parts(data)
        if payload is not None:
            return b"".join(payload)
        data = data.joined()
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable body: {exc!r}") from None


def encode(msg: m.Message, *, compress: bool = False) -> list[Frame]:
    """Turn a message into frames.

    Args:
        msg: Any message of ``wire.messages``.
        compress: Snappy-compress a body of ``COMPRESS_THRESHOLD`` bytes or more, when that
            makes it smaller.

    Returns:
        ``[header]`` or ``[header, body]``.
    """
    cls = type(msg)
    # The two kinds of every RPC, written out for a plain body: the general path below
    # gives the same bytes (tests/wire/test_codec.py checks both against the layout).
    if cls is m.Result:
        result = cast(m.Result, msg)
        plain = result.body
        if type(plain) is bytes and (not compress or len(plain) < COMPRESS_THRESHOLD):
            return [_pack.pack([_VERSION, _RESULT, 0, result.id]), plain]  # a few bytes
    elif cls is m.Call:
        call = cast(m.Call, msg)
        plain = call.body
        if (
            type(plain) is bytes
            and (not compress or len(plain) < COMPRESS_THRESHOLD)
            and call.target is None
            and call.origin is None
        ):
            fields = (call.id, call.method, call.order_key, call.headers, call.timeout)
            return [_pack([_VERSION, _CALL, 0, *fields, call.stream, call.upload]), plain]
    layout = _BY_CLASS[cls]
    header = [m.PROTOCOL_VERSION, int(msg.KIND), 0, *layout.values(msg)]
    while len(header) > 3 + layout.required and header[-1] is None:
        header.pop()  # optional trailing fields left at None are not sent
    if not layout.has_body:
        return [_pack(header)]
    given: Frame | m.LargeBody = msg.body  # type: ignore[union-attr]
    # Only bodies up to the chunk size get here joined (see Peer._send): a small copy.
    body = given.joined() if type(given) is m.LargeBody else cast(Frame, given)
    if compress and len(body) >= COMPRESS_THRESHOLD:
        packed = _compress(body)
        if packed is not None:
            header[2] = FLAG_COMPRESSED
            body = packed
    return [_pack(header), body]


def encode_head(msg: m.Message, transfer: int) -> list[Frame]:
    """The one frame that announces ``msg`` with its body to follow as chunks of ``transfer``.

    Args:
        msg: A message that carries a body (``Call``, ``Result``, ``StreamItem``).
        transfer: The id its ``Chunk`` messages will carry.
    """
    layout = _BY_CLASS[type(msg)]
    if not layout.has_body or layout.cls is m.Chunk:
        raise TypeError(f"{type(msg).__name__} has no body to chunk")
    header: list[Any] = [m.PROTOCOL_VERSION, int(msg.KIND), FLAG_CHUNKED, *layout.values(msg)]
    header.extend((transfer, len(msg.body)))  # type: ignore[union-attr]
    return [_pack(header)]


def _compress(body: Frame) -> bytes | None:
    """Snappy-compress ``body``, or None when that would not make it smaller.

    A large body is judged by a sample first: compressing megabytes of already compressed
    or random data, only to throw the result away, was a third of the CPU of large echoes.
    """
    if len(body) > COMPRESS_PROBE_SIZE:
        sample = memoryview(body)[:COMPRESS_PROBE_SIZE]
        if len(cramjam.snappy.compress_raw(sample)) > COMPRESS_PROBE_SIZE * COMPRESS_MIN_GAIN:
            return None
    packed = bytes(cramjam.snappy.compress_raw(body))
    return packed if len(packed) < len(body) else None


def decode(frames: Sequence[Frame], *, max_body_size: int) -> m.Message | ChunkedHead:
    """Turn frames read off the network into a message.

    Args:
        frames: The frames of one transport message.
        max_body_size: The largest body accepted, before and after decompression.

    Returns:
        The message, with every field of the type its class declares (except that an
        uncompressed body is the body frame itself, not copied: ``bytes``, or the
        ``bytearray``/``memoryview`` a transport received a large frame into); or, for the
        head of a chunked body, a ``ChunkedHead`` (whose size the caller checks as the chunks
        come).

    Raises:
        OversizeBodyError: The body is over ``max_body_size``.
        ProtocolError: Anything else is wrong: frame count, header, version, kind, field types,
            compression.
    """
    count = len(frames)
    if not 0 < count < 3:
        raise ProtocolError(f"expected 1 or 2 frames, got {count}")
    frame = frames[0]
    if len(frame) > MAX_HEADER_SIZE:
        raise ProtocolError(f"header of {len(frame)} bytes exceeds {MAX_HEADER_SIZE}")
    try:
        head = _unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable header: {exc!r}") from None
    if type(head) is not list or len(head) < 3:
        _refuse_header(head)
    version, kind, flags = head[0], head[1], head[2]
    layout = type(kind) is int and _BY_KIND.get(kind)
    if (
        not layout
        or version != m.PROTOCOL_VERSION
        or type(version) is not int
        or type(flags) is not int
        or flags & ~_KNOWN_FLAGS
    ):
        _refuse_header(head)
    if flags & FLAG_CHUNKED:
        return _decode_chunked_head(layout, head, flags, count)
    # One dict lookup of the header's types instead of a test per field, and the message
    # built from the header list as it is (no dict of its fields, no keyword arguments).
    checked = layout.signatures.get(tuple(map(type, head)))
    if checked is not False or layout.has_body != (count == 2):  # wrong, or to check
        _check_fields(layout, head, checked, count)
    if not layout.has_body:
        return layout.make(None, *head)
    body = frames[1]
    if flags or len(body) > max_body_size:  # compressed (the only flag left), or too large
        body = _decode_body(layout, head, body, max_body_size)
    return layout.make(body, *head)


def _decode_chunked_head(layout: _Layout, head: list[Any], flags: int, count: int) -> ChunkedHead:
    if not layout.has_body or layout.cls is m.Chunk or flags != FLAG_CHUNKED or count != 1:
        raise ProtocolError(f"bad chunked {layout.cls.__name__} (flags {flags}, {count} frames)")
    *fields, transfer, size = head[3:] or [None]
    if type(transfer) is not int or type(size) is not int or size < 0:
        raise ProtocolError(f"bad chunked head: transfer {transfer!r}, size {size!r}")
    plain = [*head[:3], *fields]
    _check_fields(layout, plain, layout.signatures.get(tuple(map(type, plain))), 2)
    return ChunkedHead(layout.make(b"", *plain), transfer, size)


def _refuse_header(head: Any) -> NoReturn:
    """Name the first thing wrong with a header's array, its version, kind or flags."""
    if type(head) is not list or not head:
        raise ProtocolError("header is not a non-empty array")
    if head[0] != m.PROTOCOL_VERSION or type(head[0]) is not int:
        raise ProtocolError(f"unsupported protocol version {head[0]!r}")
    if len(head) < 2 or type(head[1]) is not int or head[1] not in _BY_KIND:
        raise ProtocolError(f"unknown message kind {head[1:2]!r}")
    flags = head[2] if len(head) > 2 else None
    raise ProtocolError(f"bad flags {flags!r}")


def _check_fields(layout: _Layout, head: list[Any], checked: bool | None, count: int) -> None:
    """Check the fields of ``head``, whose types' entry in ``layout.signatures`` is ``checked``.

    ``count`` is the number of frames of the message (a chunked head's counts as two).

    Raises:
        ProtocolError: A field has the wrong type (``checked`` is ``None``) or value, or
            the message has the wrong number of frames.
    """
    if checked is None:
        _refuse_fields(layout, head[3:])
    if checked:
        _check_values(layout, head)
    if layout.has_body != (count == 2):
        raise ProtocolError(f"{layout.cls.__name__} with {count} frames")


def _refuse_fields(layout: _Layout, raw: list[Any]) -> NoReturn:
    """Name what is wrong with the fields ``raw`` of a header whose types do not fit."""
    if not layout.required <= len(raw) <= len(layout.fields):
        raise ProtocolError(f"{layout.cls.__name__} needs {len(layout.fields)} fields")
    for name, value, types in zip(layout.fields, raw, layout.types, strict=False):
        if type(value) not in types:
            raise ProtocolError(f"{layout.cls.__name__}.{name} has type {type(value).__name__}")
    raise ProtocolError(f"{layout.cls.__name__}: bad fields")  # not reached: the types fit


def _check_values(layout: _Layout, head: list[Any]) -> None:
    """Check what the types of a header's fields do not tell (routes, timeout, headers)."""
    size = len(head)
    for place in layout.routes:
        route = head[place] if place < size else None
        if route is not None and not m.is_route(route):
            name = layout.fields[place - 3]
            raise ProtocolError(f"{layout.cls.__name__}.{name} is not a route: {route[:80]!r}")
    timeout = head[layout.timeout] if layout.timeout is not None else None
    if timeout is not None and not timeout >= 0:  # ``not >=`` also refuses NaN
        raise ProtocolError(f"timeout must be non-negative seconds, got {timeout!r}")
    headers = head[layout.headers] if layout.headers is not None else None
    if headers is not None and not all(
        type(k) is str and type(v) in (str, bytes) for k, v in headers.items()
    ):
        raise ProtocolError("headers must map str to str or bytes")


def _decode_body(layout: _Layout, head: list[Any], frame: Frame, max_body_size: int) -> bytes:
    """The body of a message with header ``head``: decompressed, or refused as too large.

    Raises:
        OversizeBodyError: With the message, its body left empty.
        ProtocolError: The compressed body is corrupt.
    """
    if len(frame) > max_body_size:
        raise OversizeBodyError(layout.make(b"", *head), len(frame))
    if not head[2] & FLAG_COMPRESSED:
        return frame  # type: ignore[return-value]  # a buffer the transport handed over: no copy
    try:
        size = cramjam.snappy.decompress_raw_len(frame)
    except Exception as exc:
        raise ProtocolError(f"bad compressed body: {exc!r}") from None
    if size > max_body_size:
        raise OversizeBodyError(layout.make(b"", *head), size)
    try:
        return bytes(cramjam.snappy.decompress_raw(frame))
    except Exception as exc:
        raise ProtocolError(f"bad compressed body: {exc!r}") from None
