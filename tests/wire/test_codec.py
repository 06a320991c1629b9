"""The codec on frames alone: round trips, the exact header layout, and garbage in.

``decode`` is the one door from the network into the protocol, so besides round trips these
tests throw every kind of malformed input at it and require ``ProtocolError`` and nothing
else (hypothesis for arbitrary bytes and near-valid headers, tables for the named cases).
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import cramjam
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callosum_like.errors import ErrorCode, ProtocolError
from callosum_like.wire import codec
from callosum_like.wire import messages as m
from callosum_like.wire.codec import (
    COMPRESS_THRESHOLD,
    FLAG_COMPRESSED,
    MAX_HEADER_SIZE,
    ChunkedHead,
    OversizeBodyError,
    decode,
    encode,
    pack_body,
    unpack_body,
)

pytestmark = pytest.mark.timeout(30)

#: Generous enough for every body the strategies build.
BIG: int = 1 << 20

CLASSES: dict[m.MessageKind, type[Any]] = {
    cls.KIND: cls
    for cls in (
        m.Hello,
        m.Welcome,
        m.Call,
        m.Result,
        m.Failure,
        m.Error,
        m.Cancel,
        m.Cancelled,
        m.Ping,
        m.Pong,
        m.Ack,
        m.Goodbye,
        m.StreamItem,
        m.StreamEnd,
        m.Credit,
        m.Chunk,
        m.ChunkAck,
        m.ChunkAbort,
        m.ChunkStop,
        m.UploadItem,
        m.UploadEnd,
        m.UploadCredit,
        m.PeerUp,
        m.PeerDown,
    )
}
BODY_CLASSES = [m.Call, m.Result, m.StreamItem, m.UploadItem]

#: The header fields of each kind, in wire order (docs/PROTOCOL.md). Pinned here so that
#: reordering a dataclass, which silently changes the wire format, fails a test.
WIRE_FIELDS: dict[m.MessageKind, tuple[str, ...]] = {
    m.MessageKind.HELLO: ("identity", "max_body_size", "token", "session", "received"),
    m.MessageKind.WELCOME: ("identity", "assigned", "max_body_size", "session", "received"),
    m.MessageKind.CALL: (
        "id",
        "method",
        "order_key",
        "headers",
        "timeout",
        "stream",
        "upload",
        "target",
        "origin",
    ),
    m.MessageKind.RESULT: ("id",),
    m.MessageKind.FAILURE: ("id", "name", "repr", "traceback"),
    m.MessageKind.ERROR: ("id", "code", "message"),
    m.MessageKind.CANCEL: ("id",),
    m.MessageKind.CANCELLED: ("id", "reason"),
    m.MessageKind.PING: (),
    m.MessageKind.PONG: (),
    m.MessageKind.ACK: ("seq",),
    m.MessageKind.GOODBYE: ("reason",),
    m.MessageKind.STREAM_ITEM: ("id",),
    m.MessageKind.STREAM_END: ("id",),
    m.MessageKind.CREDIT: ("id", "amount"),
    m.MessageKind.CHUNK: ("transfer",),
    m.MessageKind.CHUNK_ACK: ("transfer", "amount"),
    m.MessageKind.CHUNK_ABORT: ("transfer",),
    m.MessageKind.CHUNK_STOP: ("transfer", "reason"),
    m.MessageKind.UPLOAD_ITEM: ("id",),
    m.MessageKind.UPLOAD_END: ("id",),
    m.MessageKind.UPLOAD_CREDIT: ("id", "amount"),
    m.MessageKind.PEER_UP: ("peer",),
    m.MessageKind.PEER_DOWN: ("peer", "reason"),
}
#: Trailing fields that are left out of the header while they are None.
OPTIONAL_FIELDS = {"target", "origin", "token", "session", "received"}

SAMPLES: dict[type[Any], m.Message] = {
    m.Hello: m.Hello(
        identity="agent-1", max_body_size=1 << 20, token="t" * 32, session="s" * 32, received=3
    ),
    m.Welcome: m.Welcome(
        identity="server", assigned="agent-1", max_body_size=1 << 20, session="s" * 32, received=5
    ),
    m.Call: m.Call(
        id=42,
        method="echo",
        body=pack_body({"x": [1, 2, b"\x00"]}),
        order_key="k",
        headers={"trace": "t-1", "token": b"\x01"},
        timeout=2.5,
        stream=False,
        target="sub/agent-3",
        origin="agent-1",
    ),
    m.Result: m.Result(id=42, body=pack_body([1, "two"])),
    m.Failure: m.Failure(id=42, name="ValueError", repr="ValueError('boom')", traceback="tb"),
    m.Error: m.Error(id=42, code=ErrorCode.METHOD_NOT_FOUND, message="no handler"),
    m.Cancel: m.Cancel(id=42),
    m.Cancelled: m.Cancelled(id=42, reason="execute timeout"),
    m.Ping: m.Ping(),
    m.Pong: m.Pong(),
    m.Ack: m.Ack(seq=12),
    m.Goodbye: m.Goodbye(reason="closing"),
    m.StreamItem: m.StreamItem(id=42, body=pack_body("item")),
    m.StreamEnd: m.StreamEnd(id=42),
    m.Credit: m.Credit(id=42, amount=8),
    m.Chunk: m.Chunk(transfer=7, body=b"\x00" * 100),
    m.ChunkAck: m.ChunkAck(transfer=7, amount=1),
    m.ChunkAbort: m.ChunkAbort(transfer=7),
    m.ChunkStop: m.ChunkStop(transfer=7, reason="too large"),
    m.UploadItem: m.UploadItem(id=42, body=pack_body("part")),
    m.UploadEnd: m.UploadEnd(id=42),
    m.UploadCredit: m.UploadCredit(id=42, amount=8),
    m.PeerUp: m.PeerUp(peer="sub/agent-3"),
    m.PeerDown: m.PeerDown(peer="agent-3", reason="heartbeat lost"),
}

# -- strategies -------------------------------------------------------------------------------

#: msgpack integers: int64 and uint64.
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
TEXT = st.text(max_size=20)
SCALARS = st.none() | st.booleans() | INT64 | st.floats() | st.text() | st.binary()
#: Any body value: tuples are allowed on the way in and arrive as lists.
VALUES = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=5)
        | st.lists(kids, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8) | INT64, kids, max_size=5)
    ),
    max_leaves=20,
)
SMALL_BODIES = VALUES.map(pack_body)
#: Above the threshold and repetitive: compression pays.
COMPRESSIBLE_BODIES = st.builds(
    lambda text, n: pack_body(text * n),
    st.text(min_size=1, max_size=10),
    st.integers(COMPRESS_THRESHOLD, 2 * COMPRESS_THRESHOLD),
)
#: Above the threshold and random: compression does not pay.
INCOMPRESSIBLE_BODIES = st.builds(
    lambda seed, n: pack_body(random.Random(seed).randbytes(n)),
    st.integers(0, 2**32),
    st.integers(COMPRESS_THRESHOLD, 2 * COMPRESS_THRESHOLD),
)
BODIES = SMALL_BODIES | COMPRESSIBLE_BODIES | INCOMPRESSIBLE_BODIES

#: Well-formed routes: non-empty names joined by "/".
ROUTE_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=8)
ROUTES = st.lists(ROUTE_NAMES, min_size=1, max_size=4).map("/".join)

FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "identity": TEXT,
    "assigned": TEXT,
    "method": TEXT,
    "name": TEXT,
    "repr": TEXT,
    "traceback": TEXT,
    "message": TEXT,
    "reason": TEXT,
    "max_body_size": INT64,
    "id": INT64,
    "code": INT64,
    "amount": INT64,
    "transfer": INT64,
    "order_key": st.none() | TEXT,
    "headers": st.none() | st.dictionaries(TEXT, TEXT | st.binary(max_size=20), max_size=4),
    # Timeouts are non-negative seconds (``invoke`` refuses others); inf means no limit.
    "timeout": st.none() | st.floats(min_value=0.0),
    "stream": st.booleans(),
    "upload": st.booleans(),
    "body": BODIES,
    "target": st.none() | ROUTES,
    "origin": st.none() | ROUTES,
    "peer": ROUTES,
    "token": st.none() | TEXT,
    "session": st.none() | TEXT,
    "received": st.none() | INT64,
    "seq": INT64,
}


def messages_of(cls: type[Any]) -> st.SearchStrategy[m.Message]:
    kwargs = {f.name: FIELD_STRATEGIES[f.name] for f in dataclasses.fields(cls)}
    return st.builds(cls, **kwargs)


MESSAGES = st.one_of([messages_of(cls) for cls in CLASSES.values()])
BODY_MESSAGES = st.one_of([messages_of(cls) for cls in BODY_CLASSES])

# -- helpers ----------------------------------------------------------------------------------


def header_of(msg: m.Message) -> list[Any]:
    head = msgpack.unpackb(encode(msg)[0])
    assert type(head) is list
    return head


def with_header(msg: m.Message, head: list[Any]) -> list[bytes]:
    """The frames of ``msg`` with its header replaced by ``head``."""
    return [msgpack.packb(head), *encode(msg)[1:]]


BodyMessage = m.Call | m.Result | m.StreamItem | m.UploadItem


def sample_with_body(cls: type[Any], body: bytes) -> BodyMessage:
    sample = SAMPLES[cls]
    assert isinstance(sample, BodyMessage)
    return dataclasses.replace(sample, body=body)


def as_received(value: Any) -> Any:
    """What a body value looks like after a round trip: tuples become lists."""
    if isinstance(value, list | tuple):
        return [as_received(v) for v in value]
    if isinstance(value, dict):
        return {k: as_received(v) for k, v in value.items()}
    return value


def same(a: Any, b: Any) -> bool:
    """Deep equality with exact types, where NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


_STR = (str,)
#: What each field may hold, restated from the message classes (``float`` accepts ``int``).
DECLARED: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(["identity", "assigned", "method", "name", "repr", "traceback"], _STR),
    **dict.fromkeys(["message", "reason"], _STR),
    **dict.fromkeys(["max_body_size", "id", "code", "amount", "transfer"], (int,)),
    "order_key": (str, type(None)),
    "headers": (dict, type(None)),
    "timeout": (float, int, type(None)),
    "stream": (bool,),
    "upload": (bool,),
    "body": (bytes, bytearray, memoryview),  # the frame as the transport handed it over
    "target": (str, type(None)),
    "origin": (str, type(None)),
    "peer": _STR,
    "token": (str, type(None)),
    "session": (str, type(None)),
    "received": (int, type(None)),
    "seq": (int,),
}


def assert_well_typed(msg: m.Message | ChunkedHead) -> None:
    if isinstance(msg, ChunkedHead):
        assert type(msg.transfer) is int
        assert type(msg.size) is int
        assert msg.size >= 0
        assert type(msg.message) in BODY_CLASSES
        msg = msg.message
    assert type(msg) in CLASSES.values()
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        assert type(value) in DECLARED[f.name], (f.name, value)
    headers = getattr(msg, "headers", None)
    for key, value in (headers or {}).items():
        assert type(key) is str
        assert type(value) in (str, bytes)


def decode_outcome(
    frames: list[Any], max_body_size: int = BIG
) -> m.Message | ChunkedHead | Exception:
    """Decode, returning the exception instead of raising it."""
    try:
        return decode(frames, max_body_size=max_body_size)
    except Exception as exc:
        return exc


def assert_message_or_protocol_error(frames: list[Any], max_body_size: int = BIG) -> None:
    outcome = decode_outcome(frames, max_body_size)
    if isinstance(outcome, Exception):
        assert isinstance(outcome, ProtocolError), repr(outcome)
    else:
        assert_well_typed(outcome)


# -- the tables of this file are complete -------------------------------------------------------


def test_every_kind_has_a_class_a_sample_and_a_layout() -> None:
    assert set(CLASSES) == set(m.MessageKind)
    assert set(WIRE_FIELDS) == set(m.MessageKind)
    assert set(SAMPLES) == set(CLASSES.values())
    for cls in CLASSES.values():
        assert {f.name for f in dataclasses.fields(cls)} <= set(FIELD_STRATEGIES)


def test_kind_codes_and_version_are_pinned() -> None:
    assert m.PROTOCOL_VERSION == 1
    assert [(k.name, k.value) for k in m.MessageKind] == [
        ("HELLO", 1),
        ("WELCOME", 2),
        ("CALL", 3),
        ("RESULT", 4),
        ("FAILURE", 5),
        ("ERROR", 6),
        ("CANCEL", 7),
        ("CANCELLED", 8),
        ("PING", 9),
        ("PONG", 10),
        ("GOODBYE", 11),
        ("STREAM_ITEM", 12),
        ("STREAM_END", 13),
        ("CREDIT", 14),
        ("PEER_UP", 15),
        ("PEER_DOWN", 16),
        ("ACK", 17),
        ("CHUNK", 20),
        ("CHUNK_ACK", 21),
        ("CHUNK_ABORT", 22),
        ("CHUNK_STOP", 23),
        ("UPLOAD_ITEM", 24),
        ("UPLOAD_END", 25),
        ("UPLOAD_CREDIT", 26),
    ]


# -- layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(CLASSES.values()), ids=lambda c: c.__name__)
def test_header_is_version_kind_flags_then_fields_in_order(cls: type[Any]) -> None:
    msg = SAMPLES[cls]
    frames = encode(msg)
    assert header_of(msg) == [
        m.PROTOCOL_VERSION,
        int(cls.KIND),
        0,
        *(getattr(msg, name) for name in WIRE_FIELDS[cls.KIND]),
    ]
    assert len(frames) == (2 if cls in [*BODY_CLASSES, m.Chunk] else 1)


@given(msg=BODY_MESSAGES | messages_of(m.Call), compress=st.booleans())
def test_every_header_is_its_layout_whatever_the_path(msg: m.Message, compress: bool) -> None:
    """Calls and results have an encoder of their own (the hot path): same layout, same bytes."""
    fields = [getattr(msg, name) for name in WIRE_FIELDS[msg.KIND]]
    while (
        fields and fields[-1] is None and WIRE_FIELDS[msg.KIND][len(fields) - 1] in OPTIONAL_FIELDS
    ):
        fields.pop()
    header, body = encode(msg, compress=compress)
    flags = FLAG_COMPRESSED if body != msg.body else 0  # type: ignore[union-attr]
    assert header == msgpack.packb([m.PROTOCOL_VERSION, int(msg.KIND), flags, *fields])


def test_call_bytes_are_pinned() -> None:
    """The worked example of docs/PROTOCOL.md."""
    call = m.Call(id=1, method="echo", body=pack_body({"x": [1, 2, b"\x00"]}), order_key="k")
    header, body = encode(call)
    assert header.hex(" ") == "9a 01 03 00 01 a4 65 63 68 6f a1 6b c0 c0 c2 c2"
    assert body.hex(" ") == "81 a1 78 93 01 02 c4 01 00"


def test_the_empty_body_is_packed_none() -> None:
    assert pack_body(None) == m.EMPTY_BODY
    assert encode(m.Result(id=1))[1] == m.EMPTY_BODY


# -- round trips --------------------------------------------------------------------------------


@given(msg=MESSAGES, compress=st.booleans())
def test_every_message_round_trips(msg: m.Message, compress: bool) -> None:
    frames = encode(msg, compress=compress)
    assert all(type(frame) is bytes for frame in frames)
    decoded = decode(frames, max_body_size=BIG)
    assert decoded == msg
    assert_well_typed(decoded)
    for f in dataclasses.fields(msg):
        assert type(getattr(decoded, f.name)) is type(getattr(msg, f.name))


@given(msg=MESSAGES, compress=st.booleans())
def test_decoding_accepts_bytearray_and_memoryview_frames(msg: m.Message, compress: bool) -> None:
    frames = encode(msg, compress=compress)
    assert decode([bytearray(f) for f in frames], max_body_size=BIG) == msg
    decoded = decode([memoryview(f) for f in frames], max_body_size=BIG)
    assert decoded == msg
    assert_well_typed(decoded)


def test_an_uncompressed_body_frame_is_not_copied() -> None:
    header, body = encode(m.Result(id=1, body=pack_body(b"x" * 100_000)), compress=False)
    for frame in (body, bytearray(body), memoryview(body)):
        decoded = decode([header, frame], max_body_size=BIG)
        assert isinstance(decoded, m.Result)
        assert decoded.body is frame


def test_a_large_bytes_body_packs_as_msgpack_does() -> None:
    for size in (2**16 - 1, 2**16, 3 * 2**20):
        value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        assert pack_body(value) == msgpack.packb(value, use_bin_type=True)
        assert unpack_body(pack_body(value)) == value


@given(value=VALUES)
def test_body_values_round_trip(value: Any) -> None:
    packed = pack_body(value)
    assert same(unpack_body(packed), as_received(value))
    frames = encode(m.Result(id=1, body=packed), compress=True)
    decoded = decode(frames, max_body_size=BIG)
    assert isinstance(decoded, m.Result)
    assert decoded.body == packed
    assert same(unpack_body(decoded.body), as_received(value))


def test_nan_and_signed_zero_survive_a_body_round_trip() -> None:
    out = unpack_body(pack_body([math.nan, -0.0, math.inf, (1, (2,))]))
    assert math.isnan(out[0])
    assert math.copysign(1.0, out[1]) == -1.0
    assert out[2:] == [math.inf, [1, [2]]]


@given(msg=BODY_MESSAGES, compress=st.booleans())
def test_body_frame_is_the_packed_body_unless_compressed(msg: Any, compress: bool) -> None:
    header, body = encode(msg, compress=compress)
    flags = msgpack.unpackb(header)[2]
    if not compress or len(msg.body) < COMPRESS_THRESHOLD:
        assert flags == 0
    if flags == 0:
        assert body == msg.body
    else:
        assert flags == FLAG_COMPRESSED
        assert len(body) < len(msg.body)
        assert bytes(cramjam.snappy.decompress_raw(body)) == msg.body


def test_decode_does_not_unpack_the_body() -> None:
    """The body stays opaque bytes until its point of use (``unpack_body``)."""
    header = encode(m.Result(id=1))[0]
    decoded = decode([header, b"\xc1 not msgpack"], max_body_size=BIG)
    assert decoded == m.Result(id=1, body=b"\xc1 not msgpack")
    with pytest.raises(ProtocolError):
        unpack_body(decoded.body)


def _sized_body(size: int, *, compressible: bool) -> bytes:
    """A packed bin value of exactly ``size`` bytes (bin16/bin32 headers are 3/5 bytes)."""
    raw_size = size - (3 if size - 3 < 1 << 16 else 5)
    raw = bytes(raw_size) if compressible else random.Random(size).randbytes(raw_size)
    body = pack_body(raw)
    assert len(body) == size
    return body


@pytest.mark.parametrize(
    ("size", "compressible", "compress", "expect_compressed"),
    [
        (COMPRESS_THRESHOLD - 1, True, True, False),
        (COMPRESS_THRESHOLD, True, True, True),
        (10 * COMPRESS_THRESHOLD, True, True, True),
        (10 * COMPRESS_THRESHOLD, True, False, False),
        (COMPRESS_THRESHOLD, False, True, False),
        (10 * COMPRESS_THRESHOLD, False, True, False),
    ],
)
def test_compression_threshold_and_only_when_it_shrinks(
    size: int, compressible: bool, compress: bool, expect_compressed: bool
) -> None:
    msg = m.Result(id=7, body=_sized_body(size, compressible=compressible))
    header, body = encode(msg, compress=compress)
    assert msgpack.unpackb(header)[2] == (FLAG_COMPRESSED if expect_compressed else 0)
    assert (body != msg.body) == expect_compressed
    assert decode([header, body], max_body_size=BIG) == msg


def test_a_compressed_body_is_decoded_whatever_the_receivers_own_setting() -> None:
    msg = m.Call(id=1, method="m", body=_sized_body(50_000, compressible=True))
    frames = encode(msg, compress=True)
    assert len(frames[1]) < 50_000
    assert decode(frames, max_body_size=BIG) == msg


# -- garbage in ---------------------------------------------------------------------------------


@given(frames=st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    assert_message_or_protocol_error(frames)


@given(
    version=st.just(1) | VALUES,
    kind=st.integers(-1, 16) | VALUES,
    flags=st.sampled_from([0, FLAG_COMPRESSED]) | VALUES,
    fields=st.lists(VALUES, max_size=8),
    body=st.none() | st.binary(max_size=64),
)
def test_arbitrary_headers_raise_only_protocol_error(
    version: Any, kind: Any, flags: Any, fields: list[Any], body: bytes | None
) -> None:
    frames = [msgpack.packb([version, kind, flags, *fields])]
    if body is not None:
        frames.append(body)
    assert_message_or_protocol_error(frames)


@given(msg=MESSAGES, data=st.data())
def test_near_valid_headers_raise_only_protocol_error(msg: m.Message, data: st.DataObject) -> None:
    """One header element replaced by any msgpack value: a typed message or ProtocolError."""
    head = header_of(msg)
    index = data.draw(st.integers(0, len(head) - 1))
    head[index] = data.draw(VALUES)
    assert_message_or_protocol_error(with_header(msg, head))


@given(msg=MESSAGES, compress=st.booleans(), data=st.data())
def test_mutated_frames_raise_only_protocol_error(
    msg: m.Message, compress: bool, data: st.DataObject
) -> None:
    frames = [bytearray(f) for f in encode(msg, compress=compress)]
    for _ in range(data.draw(st.integers(1, 4))):
        frame = frames[data.draw(st.integers(0, len(frames) - 1))]
        pos = data.draw(st.integers(0, len(frame)))
        byte = data.draw(st.integers(0, 255))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert" or pos == len(frame):
            frame.insert(pos, byte)
        elif action == "flip":
            frame[pos] ^= byte or 0xFF
        else:
            del frame[pos]
    assert_message_or_protocol_error([bytes(f) for f in frames], max_body_size=1 << 16)


@pytest.mark.parametrize("cls", list(CLASSES.values()), ids=lambda c: c.__name__)
def test_every_prefix_of_a_header_is_refused(cls: type[Any]) -> None:
    header, *rest = encode(SAMPLES[cls])
    for end in range(len(header)):
        with pytest.raises(ProtocolError):
            decode([header[:end], *rest], max_body_size=BIG)


@pytest.mark.parametrize("cls", BODY_CLASSES, ids=lambda c: c.__name__)
def test_every_prefix_of_a_compressed_body_is_refused(cls: type[Any]) -> None:
    msg = sample_with_body(cls, pack_body("abc" * 3000))
    header, body = encode(msg, compress=True)
    assert msgpack.unpackb(header)[2] == FLAG_COMPRESSED
    for end in range(len(body)):
        with pytest.raises(ProtocolError):
            decode([header, body[:end]], max_body_size=BIG)


def test_a_truncated_plain_body_is_caught_where_it_is_unpacked() -> None:
    header, body = encode(SAMPLES[m.Result])
    decoded = decode([header, body[:-1]], max_body_size=BIG)
    assert isinstance(decoded, m.Result)
    with pytest.raises(ProtocolError):
        unpack_body(decoded.body)


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([], id="no frames"),
        pytest.param([encode(m.Ping())[0]] * 3, id="three frames"),
        pytest.param(encode(SAMPLES[m.Call])[:1], id="call without body"),
        pytest.param([*encode(m.Ping()), b"\xc0"], id="ping with body"),
        pytest.param([*encode(SAMPLES[m.Result]), b"\xc0"], id="result with two bodies"),
    ],
)
def test_wrong_frame_count(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(frames, max_body_size=BIG)


@pytest.mark.parametrize(
    "header",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgpack.packb([]),
        msgpack.packb({"v": 1}),
        msgpack.packb(1),
        msgpack.packb("ping"),
        msgpack.packb(b"\x01\x09\x00"),
        msgpack.packb(None),
        msgpack.packb([1, 9, 0]) + b"\x00",  # trailing bytes
        msgpack.packb([1]),
        msgpack.packb([1, 9]),  # no flags
        b"\x91" * 100_000 + b"\x00",  # nested deeper than the unpacker allows
    ],
    ids=repr,
)
def test_bad_headers(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode([header], max_body_size=BIG)


@pytest.mark.parametrize("version", [0, 2, -1, 256, "1", 1.0, True, None, b"\x01", [1]])
def test_other_versions_are_refused(version: Any) -> None:
    with pytest.raises(ProtocolError):
        decode([msgpack.packb([version, int(m.MessageKind.PING), 0])], max_body_size=BIG)


@pytest.mark.parametrize("kind", [0, 15, 19, 22, 255, -1, 2**64 - 1, "3", 3.0, True, None, b"\x03"])
def test_unknown_kinds_are_refused(kind: Any) -> None:
    with pytest.raises(ProtocolError):
        decode([msgpack.packb([m.PROTOCOL_VERSION, kind, 0])], max_body_size=BIG)


@pytest.mark.parametrize("flags", [2, 3, 4, 0x80, 0xFF, -1, 1 << 40, "1", 1.0, True, None, [0]])
@pytest.mark.parametrize("cls", [m.Ping, m.Result], ids=lambda c: c.__name__)
def test_unknown_or_mistyped_flags_are_refused(cls: type[Any], flags: Any) -> None:
    head = header_of(SAMPLES[cls])
    head[2] = flags
    with pytest.raises(ProtocolError):
        decode(with_header(SAMPLES[cls], head), max_body_size=BIG)


@pytest.mark.parametrize("cls", list(CLASSES.values()), ids=lambda c: c.__name__)
def test_wrong_field_count(cls: type[Any]) -> None:
    msg = SAMPLES[cls]
    head = header_of(msg)
    with pytest.raises(ProtocolError):
        decode(with_header(msg, [*head, 0]), max_body_size=BIG)
    required = [f for f in WIRE_FIELDS[cls.KIND] if f not in OPTIONAL_FIELDS]
    if required:
        with pytest.raises(ProtocolError):
            decode(with_header(msg, head[: 3 + len(required) - 1]), max_body_size=BIG)


#: Strings that are not routes: empty names, or too long.
BAD_ROUTES = ["", "/", "a/", "/a", "a//b", "x" * 1025]
_BAD_INT = ["1", 1.0, None, True, False, b"\x01", [1], {}]
_BAD_STR = [b"x", 1, 1.5, None, True, ["x"], {}]
#: Values of the wrong type for each field (bool is not an int on the wire).
WRONG_VALUES: dict[str, list[Any]] = {
    **dict.fromkeys(["max_body_size", "id", "code", "amount", "transfer"], _BAD_INT),
    **dict.fromkeys(["identity", "assigned", "method", "name", "repr", "traceback"], _BAD_STR),
    **dict.fromkeys(["message", "reason"], _BAD_STR),
    "order_key": [b"x", 1, True, ["x"], {}],
    "headers": [[], "x", 1, True, {1: "a"}, {"a": 1}, {"a": None}, {b"a": "x"}, {"a": ["x"]}],
    "timeout": ["1", True, False, b"1", [1.0], {}],
    "stream": [1, 0, None, "true", 1.0, []],
    "upload": [1, 0, None, "true", 1.0, []],
    "target": [b"x", 1, True, ["x"], {}, *BAD_ROUTES],
    "origin": [b"x", 1, True, ["x"], {}, *BAD_ROUTES],
    "peer": [b"x", 1, None, True, ["x"], {}, *BAD_ROUTES],
    "token": [b"x", 1, True, ["x"], {}],
    "session": [b"x", 1, True, ["x"], {}],
    "received": ["1", True, 1.5, b"1", [], {}],
    "seq": ["1", None, True, 1.5, b"1", []],
}

FIELD_CASES = [
    pytest.param(cls, index, name, id=f"{cls.__name__}.{name}")
    for kind, cls in CLASSES.items()
    for index, name in enumerate(WIRE_FIELDS[kind], start=3)
]


@pytest.mark.parametrize(("cls", "index", "name"), FIELD_CASES)
def test_fields_of_the_wrong_type_are_refused(cls: type[Any], index: int, name: str) -> None:
    msg = SAMPLES[cls]
    for value in WRONG_VALUES[name]:
        head = header_of(msg)
        head[index] = value
        with pytest.raises(ProtocolError):
            decode(with_header(msg, head), max_body_size=BIG)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xff\xff\xff\xff\xff",  # a length varint that never ends
        b"\x05\x00",  # claims 5 bytes, holds none
        b"\x0a" + b"\xfe" * 20,  # copy elements that point before the start
        bytes(cramjam.snappy.compress_raw(b"x" * 5000))[:-1],
        bytes(cramjam.snappy.compress_raw(b"x" * 5000)) + b"\x00",
    ],
    ids=repr,
)
def test_corrupt_compressed_bodies_are_refused(body: bytes) -> None:
    head = header_of(SAMPLES[m.Result])
    head[2] = FLAG_COMPRESSED
    with pytest.raises(ProtocolError):
        decode([msgpack.packb(head), body], max_body_size=BIG)


@given(body=st.binary(max_size=200))
def test_arbitrary_compressed_bodies_raise_only_protocol_error(body: bytes) -> None:
    head = header_of(SAMPLES[m.Call])
    head[2] = FLAG_COMPRESSED
    assert_message_or_protocol_error([msgpack.packb(head), body], max_body_size=1 << 16)


def test_header_size_limit() -> None:
    """[1, 11, 0, reason]: 4 bytes, a str32 prefix of 5, then the reason."""
    fits = m.Goodbye(reason="x" * (MAX_HEADER_SIZE - 9))
    frames = encode(fits)
    assert len(frames[0]) == MAX_HEADER_SIZE
    assert decode(frames, max_body_size=1) == fits
    too_big = encode(m.Goodbye(reason="x" * (MAX_HEADER_SIZE - 8)))
    with pytest.raises(ProtocolError, match="header"):
        decode(too_big, max_body_size=1)


# -- oversize bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", BODY_CLASSES, ids=lambda c: c.__name__)
def test_oversize_body_keeps_the_header(cls: type[Any]) -> None:
    msg = sample_with_body(cls, _sized_body(5000, compressible=False))
    frames = encode(msg, compress=True)
    assert len(frames[1]) == 5000
    assert decode(frames, max_body_size=5000) == msg
    with pytest.raises(OversizeBodyError) as info:
        decode(frames, max_body_size=4999)
    assert isinstance(info.value, ProtocolError)
    assert info.value.size == 5000
    assert info.value.message == dataclasses.replace(msg, body=b"")


@pytest.mark.parametrize("cls", BODY_CLASSES, ids=lambda c: c.__name__)
def test_oversize_body_after_decompression_keeps_the_header(cls: type[Any]) -> None:
    msg = sample_with_body(cls, _sized_body(100_000, compressible=True))
    frames = encode(msg, compress=True)
    assert len(frames[1]) < 10_000
    assert decode(frames, max_body_size=100_000) == msg
    with pytest.raises(OversizeBodyError) as info:
        decode(frames, max_body_size=99_999)
    assert info.value.size == 100_000
    assert info.value.message == dataclasses.replace(msg, body=b"")


def test_oversize_call_names_its_id() -> None:
    call = m.Call(id=2**40, method="upload", body=pack_body(bytes(1000)), order_key="k")
    with pytest.raises(OversizeBodyError) as info:
        decode(encode(call), max_body_size=100)
    refused = info.value.message
    assert isinstance(refused, m.Call)
    assert (refused.id, refused.method, refused.order_key) == (2**40, "upload", "k")


def test_a_mistyped_header_is_refused_before_the_body_size() -> None:
    head = header_of(SAMPLES[m.Call])
    head[3] = "not an id"
    with pytest.raises(ProtocolError) as info:
        decode([msgpack.packb(head), bytes(1000)], max_body_size=10)
    assert not isinstance(info.value, OversizeBodyError)


# -- bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [object(), 2**64, -(2**63) - 1, {1, 2}, "\ud800"], ids=repr)
def test_pack_body_refuses_what_msgpack_cannot_hold(value: Any) -> None:
    with pytest.raises(TypeError, match="msgpack"):
        pack_body([1, "before the bad value", value])
    # The packer is reused: nothing of the failed value is left in it.
    assert pack_body([1, "x"]) == msgpack.packb([1, "x"])


def test_the_reused_packer_lets_a_grown_buffer_go() -> None:
    threads_packer = codec._pack.pack  # noqa: SLF001 (white-box: this thread's)
    assert pack_body(["small"]) == msgpack.packb(["small"])
    assert codec._pack.pack is threads_packer  # noqa: SLF001 (white-box)
    large = ["x" * codec.PACKER_BUFFER]  # a str: packed by msgpack, not passed through
    assert pack_body(large) == msgpack.packb(large)
    assert codec._pack.pack is not threads_packer  # noqa: SLF001 (white-box)
    assert pack_body(["small"]) == msgpack.packb(["small"])


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x01\x02"], ids=repr)
def test_unpack_body_refuses_anything_but_one_value(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        unpack_body(data)


@given(data=st.binary(max_size=64))
def test_unpack_body_raises_only_protocol_error(data: bytes) -> None:
    try:
        unpack_body(data)
    except Exception as exc:
        error: Exception | None = exc
    else:
        error = None
    assert error is None or isinstance(error, ProtocolError), repr(error)


# -- Failure.from_exception ---------------------------------------------------------------------


class CustomError(Exception):
    class Nested(Exception):
        pass


def _fail(exc: BaseException) -> None:
    raise exc


def _failure_of(exc: BaseException) -> m.Failure:
    try:
        _fail(exc)
    except BaseException as caught:  # the point is to capture anything
        return m.Failure.from_exception(7, caught)
    raise AssertionError("unreachable")


def test_failure_captures_name_repr_and_traceback() -> None:
    failure = _failure_of(ValueError("boom"))
    assert failure.id == 7
    assert failure.name == "ValueError"
    assert failure.repr == "ValueError('boom')"
    assert failure.traceback.startswith("Traceback (most recent call last):\n")
    assert "in _fail" in failure.traceback
    assert failure.traceback.endswith("ValueError: boom\n")
    assert decode(encode(failure), max_body_size=1) == failure


def test_failure_names_non_builtin_exceptions_by_module_and_qualname() -> None:
    assert _failure_of(CustomError("x")).name == f"{__name__}.CustomError"
    assert _failure_of(CustomError.Nested()).name == f"{__name__}.CustomError.Nested"
    assert _failure_of(KeyboardInterrupt()).name == "KeyboardInterrupt"


def test_failure_of_an_exception_never_raised_has_no_frames() -> None:
    failure = m.Failure.from_exception(1, KeyError("k"))
    assert (failure.name, failure.repr, failure.traceback) == (
        "KeyError",
        "KeyError('k')",
        "KeyError: 'k'\n",
    )


def test_failure_traceback_includes_the_cause() -> None:
    try:
        try:
            _fail(KeyError("inner"))
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as exc:
        failure = m.Failure.from_exception(1, exc)
    assert "KeyError: 'inner'" in failure.traceback
    assert "direct cause" in failure.traceback
    assert failure.traceback.endswith("RuntimeError: outer\n")


def test_failure_of_an_exception_with_a_huge_message_still_decodes() -> None:
    failure = _failure_of(ValueError("x" * MAX_HEADER_SIZE))
    decoded = decode(encode(failure), max_body_size=1)
    assert isinstance(decoded, m.Failure)
    assert (decoded.id, decoded.name) == (7, "ValueError")
    assert decoded.repr.startswith("ValueError('xxx")


@pytest.mark.parametrize("timeout", [math.nan, -1.0, -math.inf])
def test_a_call_timeout_must_be_non_negative_seconds(timeout: float) -> None:
    head = header_of(SAMPLES[m.Call])
    head[WIRE_FIELDS[m.MessageKind.CALL].index("timeout") + 3] = timeout
    with pytest.raises(ProtocolError):
        decode(with_header(SAMPLES[m.Call], head), max_body_size=BIG)


def test_large_incompressible_body_is_sent_as_is_and_compressible_one_is_compressed() -> None:
    import os

    random_body = os.urandom(1 << 20)
    frames = encode(m.Result(id=1, body=random_body), compress=True)
    assert frames[1] == random_body  # the sample showed it would not shrink
    text_body = b"all work and no play " * 50_000
    frames = encode(m.Result(id=1, body=text_body), compress=True)
    assert len(frames[1]) < len(text_body) // 4
    assert decode(frames, max_body_size=1 << 21) == m.Result(id=1, body=text_body)


# -- federation fields --------------------------------------------------------------------------


def test_a_call_without_target_or_origin_leaves_them_out_of_its_header() -> None:
    """Peers that predate federation read such a call as before: the layout is unchanged."""
    call = m.Call(id=1, method="echo")
    assert len(header_of(call)) == 3 + 7
    assert len(header_of(dataclasses.replace(call, target="agent-3"))) == 3 + 8
    assert header_of(dataclasses.replace(call, origin="agent-3"))[-2:] == [None, "agent-3"]


def test_a_hello_without_token_has_the_header_of_peers_that_predate_it() -> None:
    """A peer before several links per identity reads a tokenless Hello as before."""
    hello = m.Hello(identity="agent-1", max_body_size=1024)
    assert header_of(hello)[3:] == ["agent-1", 1024]
    with_token = dataclasses.replace(hello, token="ab" * 16)
    assert header_of(with_token)[3:] == ["agent-1", 1024, "ab" * 16]
    assert decode(encode(with_token), max_body_size=BIG) == with_token


@pytest.mark.parametrize("fields", [7, 8, 9])
def test_optional_trailing_fields_may_be_sent_as_nil(fields: int) -> None:
    call = m.Call(id=1, method="echo")
    head = [*header_of(call), None, None][: 3 + fields]
    assert decode(with_header(call, head), max_body_size=BIG) == call


@pytest.mark.parametrize(
    "route", ["a", "a/b", "cluster-b/sub/agent-1", "x" * 1024, "ü/…"], ids=lambda r: r[:20]
)
def test_well_formed_routes_are_accepted(route: str) -> None:
    for msg in (
        m.Call(id=1, method="m", target=route, origin=route),
        m.PeerUp(peer=route),
        m.PeerDown(peer=route),
    ):
        assert decode(encode(msg), max_body_size=BIG) == msg


@pytest.mark.parametrize(
    "call",
    [
        m.Call(id=1, method="m", origin="a//b"),
        m.Call(id=1, method="m", target=""),
        m.Call(id=1, method="m", timeout=-1.0),
        m.Call(id=1, method="m", headers={"a": 1}),  # type: ignore[dict-item]
    ],
    ids=["origin", "target", "timeout", "headers"],
)
def test_the_values_of_a_chunked_head_are_checked_as_a_messages(call: m.Call) -> None:
    with pytest.raises(ProtocolError):
        decode(codec.encode_head(call, transfer=1), max_body_size=BIG)
    with pytest.raises(ProtocolError):
        decode(codec.encode(call), max_body_size=BIG)


@given(msg=MESSAGES)
def test_a_decoded_message_is_the_one_its_class_builds(msg: m.Message) -> None:
    """The decoder fills a new instance's slots itself: every field, nothing else."""
    decoded = decode(encode(msg), max_body_size=BIG)
    assert type(decoded) is type(msg)
    for field in dataclasses.fields(msg):  # type: ignore[arg-type]
        assert getattr(decoded, field.name) == getattr(msg, field.name)


@pytest.mark.parametrize("size", [0, 1, 64, 255, 256, 257, 65535, 65536])
def test_a_bytes_body_packs_as_msgpack_packs_it(size: int) -> None:
    """Small ``bytes`` bodies are packed by hand (bin 8): the same bytes msgpack writes."""
    value = random.Random(size).randbytes(size)
    packed = pack_body(value)
    joined = packed.joined() if isinstance(packed, m.LargeBody) else packed
    assert joined == msgpack.packb(value)
    assert unpack_body(packed) == value
