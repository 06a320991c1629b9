"""Schema files without a peer: loading, the type language, validation, declared errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import callosum_like as cl
from callosum_like.upper import schema

from .conftest import IDL, KV_SCHEMA, SIMPLE_SCHEMA

pytestmark = pytest.mark.timeout(30)

HEADER = '[service]\nname = "Svc"\n'


def wire(body: Any) -> Any:
    """What the other side gets after msgpack (tuples become lists, bytes stay bytes)."""
    return msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False, strict_map_key=False)


def test_kvstore_schema_describes_the_service() -> None:
    assert KV_SCHEMA.name == "KVStore"
    assert KV_SCHEMA.doc == "A small in-memory key-value store."
    assert list(KV_SCHEMA.methods) == ["get", "put", "remove", "scan", "size", "clear"]
    put = KV_SCHEMA.methods["put"]
    assert put.args == ("key", "value", "tags")
    assert put.result == "bool"
    assert list(put.errors) == ["StoreFull"]
    assert put.errors["StoreFull"] is KV_SCHEMA.errors.StoreFull
    assert KV_SCHEMA.methods["clear"].oneway
    assert KV_SCHEMA.methods["remove"].result == "none"
    assert set(KV_SCHEMA.records) == {"Entry"}
    assert set(KV_SCHEMA.errors) == {"KeyNotFound", "StoreFull"}
    assert "KVStore" in repr(KV_SCHEMA)
    assert KV_SCHEMA.source.endswith("kvstore.schema.toml")


def test_records_are_structs_with_defaults_and_optionals() -> None:
    entry = KV_SCHEMA.records.Entry(key="k", value=b"v")
    assert isinstance(entry, schema.Record)
    assert repr(entry) == "Entry(key='k', value=b'v', expires=None, tags=[])"
    assert schema.Record.__module__ == "callosum_like.upper.schema"
    assert (entry.key, entry.value, entry.expires, entry.tags) == ("k", b"v", None, [])
    assert KV_SCHEMA.records["Entry"] is KV_SCHEMA.records.Entry
    with pytest.raises(AttributeError, match="no record named 'Nope'"):
        _ = KV_SCHEMA.records.Nope


def test_arguments_bind_positionally_and_by_name_and_fill_defaults() -> None:
    put = KV_SCHEMA.methods["put"]
    body = put.pack_args("KVStore.put", ("k",), {"value": b"v"})
    assert body == {"key": "k", "value": b"v"}
    assert put.unpack_args("KVStore.put", wire(body)) == {"key": "k", "value": b"v", "tags": []}
    greet = SIMPLE_SCHEMA.methods["greet"]
    assert greet.unpack_args("x", {"name": "n"}) == {
        "name": "n",
        "greeting": "hello",
        "punctuation": None,
    }


def every_type() -> dict[str, Any]:
    records = SIMPLE_SCHEMA.records
    return {
        "flag": False,
        "number": -(2**63),
        "real": 2.5,
        "text": "héllo",
        "blob": b"\x00\xff",
        "numbers": [2**63 - 1, 0],
        "points": {"o": records.Point(x=0.0, y=-1.0)},
        "by_id": {-5: "minus five"},
        "by_bytes": {b"\x00": True},
        "note": None,
        "maybe": {"x": 1, "y": 2},  # a map is as good as a struct, and ints as floats
        "nested": [[b"a"], []],
        "anything": {"free": [None, 1.5, b"x", {"deep": True}]},
    }


def test_every_type_round_trips_through_msgpack() -> None:
    mirror = SIMPLE_SCHEMA.methods["mirror"]
    body = mirror.pack_args("Simple.mirror", (every_type(),), {})
    value = mirror.unpack_args("Simple.mirror", wire(body))["value"]
    assert isinstance(value, SIMPLE_SCHEMA.records.Everything)
    assert value.maybe == SIMPLE_SCHEMA.records.Point(x=1.0, y=2.0)
    assert value.count == 7  # the declared default
    reply = mirror.pack_result("Simple.mirror", value)
    assert mirror.unpack_reply("Simple.mirror", wire(reply)) == value


def test_recursive_records() -> None:
    depth = SIMPLE_SCHEMA.methods["depth"]
    tree = {"label": "root", "children": [{"label": "a", "children": [{"label": "b"}]}]}
    parsed: Any = depth.unpack_args("x", wire(depth.pack_args("x", (tree,), {})))["tree"]
    assert parsed.children[0].children[0].label == "b"
    with pytest.raises(
        cl.SchemaError, match=r"field `label` - at `tree.children\[0\].children\[0\]`"
    ):
        depth.pack_args("x", ({"label": "r", "children": [{"label": "a", "children": [{}]}]},), {})


@given(
    st.fixed_dictionaries(
        {
            "flag": st.booleans(),
            "number": st.integers(-(2**63), 2**63 - 1),
            "real": st.floats(allow_nan=False),
            "text": st.text(),
            "blob": st.binary(),
            "numbers": st.lists(st.integers(-(2**63), 2**63 - 1)),
            "points": st.dictionaries(
                st.text(), st.builds(dict, x=st.floats(allow_nan=False), y=st.just(0.0))
            ),
            "by_id": st.dictionaries(st.integers(-(2**63), 2**63 - 1), st.text()),
            "by_bytes": st.dictionaries(st.binary(), st.booleans()),
            "note": st.none() | st.text(),
            "maybe": st.none(),
            "nested": st.lists(st.lists(st.binary())),
            "anything": st.recursive(
                st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
                lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                max_leaves=10,
            ),
            "count": st.integers(-(2**63), 2**63 - 1),
        }
    )
)
def test_any_valid_record_round_trips(value: dict[str, Any]) -> None:
    mirror = SIMPLE_SCHEMA.methods["mirror"]
    body = mirror.pack_args("Simple.mirror", (), {"value": value})
    assert wire(body) == {"value": value}
    parsed = mirror.unpack_args("Simple.mirror", wire(body))["value"]
    reply = wire(mirror.pack_result("Simple.mirror", parsed))
    assert reply == {"result": value}


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "message"),
    [
        ("add", ("1", 2), {}, "Simple.add: bad arguments: Expected `int`, got `str` - at `a`"),
        ("add", (1,), {}, "Simple.add: bad arguments: Object missing required field `b`"),
        ("add", (1, 2, 3), {}, "Simple.add: takes 2 arguments, 3 were given"),
        ("add", (1,), {"c": 2}, "Simple.add: bad arguments: Object contains unknown field `c`"),
        ("add", (1,), {"a": 2}, "Simple.add: argument `a` given twice"),
        ("add", (1, 2**63), {}, "Simple.add: bad arguments: Expected `int` <= 9223372036854775807"),
        ("add", (True, 1), {}, "Expected `int`, got `bool` - at `a`"),
        ("echo", (b"bytes",), {}, "Simple.echo: bad arguments: Expected `str`, got `bytes`"),
        (
            "echo_bytes",
            ("AAAA",),
            {},
            "Simple.echo_bytes: bad arguments: Expected `bytes`, got `str`",
        ),
        ("echo", (object(),), {}, "Simple.echo: bad arguments: `text`: Encoding objects of type"),
        ("mirror", ({"flag": 1},), {}, "Expected `bool`, got `int` - at `value.flag`"),
        ("group_by_length", (["a", 1],), {}, "Expected `str`, got `int` - at `words[1]`"),
        ("find", ([1], None), {}, "Expected `int`, got `null` - at `wanted`"),
    ],
)
def test_bad_calls_name_the_method_and_the_field(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(cl.SchemaError) as caught:
        SIMPLE_SCHEMA.methods[method].pack_args(f"Simple.{method}", args, kwargs)
    assert message in str(caught.value)


def test_bytes_like_values_are_bytes() -> None:
    echo_bytes = SIMPLE_SCHEMA.methods["echo_bytes"]
    for value in (bytearray(b"ab"), memoryview(b"ab")):
        body = wire(echo_bytes.pack_args("Simple.echo_bytes", (value,), {}))
        assert echo_bytes.unpack_args("Simple.echo_bytes", body) == {"data": b"ab"}


def test_a_struct_built_by_hand_is_checked_too() -> None:
    # msgspec does not validate on construction; the client still catches it.
    bad_point = SIMPLE_SCHEMA.records.Point(x="not a float", y=0.0)
    with pytest.raises(cl.SchemaError, match=r"Expected `float`, got `str` - at `value.maybe.x`"):
        SIMPLE_SCHEMA.methods["mirror"].pack_args("m", ({**every_type(), "maybe": bad_point},), {})


@pytest.mark.parametrize(
    "body",
    [None, [], "x", {"a": 1}, {"a": 1, "b": 2, "c": 3}, {"a": 1.5, "b": 2}, {1: 1, "b": 2}],
)
def test_the_serving_side_rejects_bad_bodies(body: Any) -> None:
    with pytest.raises(cl.SchemaError, match=r"^Simple\.add: bad arguments: "):
        SIMPLE_SCHEMA.methods["add"].unpack_args("Simple.add", body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"result": "x"}, "Simple.fail: bad result: Expected `int`, got `str` - at `result`"),
        ({}, "malformed reply"),
        ([1], "malformed reply"),
        ({"result": 1, "extra": 2}, "malformed reply"),
        ({"error": "Nope", "fields": {}}, "undeclared error 'Nope'"),
        ({"error": "Oops", "fields": [1]}, "malformed fields of error Oops"),
        ({"error": "Oops", "fields": {"message": "m"}}, "missing required field `code`"),
    ],
)
def test_the_calling_side_rejects_bad_replies(body: Any, message: str) -> None:
    with pytest.raises(cl.SchemaError) as caught:
        SIMPLE_SCHEMA.methods["fail"].unpack_reply("Simple.fail", body)
    assert message in str(caught.value)


def test_declared_errors_are_typed_exceptions_with_fields() -> None:
    oops_class = SIMPLE_SCHEMA.errors.Oops
    oops = oops_class(message="m", code=3)
    assert isinstance(oops, schema.ServiceError)
    assert isinstance(oops, cl.RPCError)
    assert (oops.message, oops.code, oops.fields) == ("m", 3, {"message": "m", "code": 3})
    assert repr(oops) == str(oops) == "Oops(message='m', code=3)"
    assert oops_class.__module__ == "callosum_like.upper.schema"
    fail = SIMPLE_SCHEMA.methods["fail"]
    assert fail.declares(oops)
    assert not SIMPLE_SCHEMA.methods["add"].declares(oops)
    reply = fail.pack_error("Simple.fail", oops)
    assert reply == {"error": "Oops", "fields": {"message": "m", "code": 3}}
    with pytest.raises(oops_class) as caught:
        fail.unpack_reply("Simple.fail", wire(reply))
    assert caught.value.fields == oops.fields
    with pytest.raises(cl.SchemaError, match="Oops: bad fields: Expected `int`, got `str`"):
        oops_class(message="m", code="3")
    with pytest.raises(TypeError, match="not ServiceError itself"):
        schema.ServiceError()


def test_load_reads_paths_and_loads_reads_strings(tmp_path: Path) -> None:
    path = tmp_path / "svc.schema.toml"
    path.write_text(HEADER + '[methods.hello]\nresult = "str"\n', encoding="utf-8")
    assert list(schema.load(path).methods) == ["hello"]
    assert schema.load(str(path)).source == str(path)
    assert schema.loads(HEADER).methods == {}
    with pytest.raises(FileNotFoundError):
        schema.load(tmp_path / "missing.toml")
    assert schema.load(IDL / "simple.schema.toml").name == "Simple"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[service]\nname = 1\n", "[service]: expected a string"),
        ("[methods.x]\n", "missing the [service] table"),
        ("service = 1\n", "[service]: expected a table, got 1"),
        ('[service]\nname = "S"\nversion = 2\n', "[service]: unknown key `version`"),
        ("[service]\n", "[service]: missing `name`"),
        ('[service]\nname = "a-b"\n', "the name 'a-b' must be a Python identifier"),
        (HEADER + "[extra]\n", "unknown key `extra`"),
        (
            HEADER + '[records.R]\nx = "strr"\n',
            "[records.R] `x`: bad type 'strr': unknown type `strr`",
        ),
        (
            HEADER + '[records.R]\nx = "map[float, int]"\n',
            "map keys must be one of bytes, int, str",
        ),
        (HEADER + '[records.R]\nx = "list[int"\n', "bad type 'list[int': unexpected end"),
        (HEADER + '[records.R]\nx = "list[int]]"\n', "bad type 'list[int]]': unexpected `]`"),
        (HEADER + '[records.R]\nx = "none"\n', "`none` is only a result"),
        (HEADER + "[records.R]\nx = 3\n", "[records.R] `x`: expected a string, got 3"),
        (HEADER + '[records.R]\nclass = "int"\n', "field 'class' must be a Python identifier"),
        (HEADER + '[records.R]\n_x = "int"\n', "field '_x' must be a Python identifier"),
        (HEADER + '[records.int]\nx = "int"\n', "[records.int]: `int` is a built-in type name"),
        (HEADER + '[records.R]\nx = { type = "int", nope = 1 }\n', "unknown key `nope`"),
        (HEADER + '[records.R]\nx = { doc = "d" }\n', "[records.R] `x`: missing `type`"),
        (
            HEADER + '[records.R]\nx = { type = "int", default = "1" }\n',
            "bad default: Expected `int`, got `str`",
        ),
        (
            HEADER + '[records.R]\nx = "int"\n[errors.R]\ny = "int"\n',
            "[errors.R]: `R` is already a record",
        ),
        (HEADER + '[errors.E]\nargs = "int"\n', "field `args` is reserved by ServiceError"),
        (HEADER + '[errors.E]\nfields_type = "int"\n', "field `fields_type` is reserved"),
        (HEADER + '[errors.E]\nfields = "int"\n', "field `fields` is reserved"),
        (HEADER + '[methods.m]\nresult = "nothing"\n', "[methods.m] result: bad type 'nothing'"),
        (HEADER + '[methods.m]\nargs = { a = "none" }\n', "`none` is only a result"),
        (HEADER + '[methods.m]\nerrors = ["E"]\n', "[methods.m]: unknown error `E`"),
        (HEADER + '[methods.m]\nerrors = "E"\n', "`errors` must be a list of error names"),
        (HEADER + '[methods.m]\noneway = "yes"\n', "`oneway` must be true or false"),
        (HEADER + '[methods.m]\noneway = true\nresult = "int"\n', "a oneway method has result"),
        (HEADER + '[methods.m]\nreturns = "int"\n', "[methods.m]: unknown key `returns`"),
        (HEADER + "[methods.m-x]\n", "[methods.m-x]: the name 'm-x' must be a Python identifier"),
        ("methods = 3\n" + HEADER, "`methods`: expected a table, got 3"),
        ("[service\n", "not valid TOML"),
    ],
)
def test_invalid_schemas_are_refused_with_the_place(text: str, message: str) -> None:
    with pytest.raises(cl.SchemaError) as caught:
        schema.loads(text, source="bad.toml")
    assert str(caught.value).startswith("bad.toml: ")
    assert message in str(caught.value)


def test_records_may_come_in_any_order_and_use_every_type_form() -> None:
    service = schema.loads(
        HEADER
        + """
[records.Outer]
inner = "Inner"
maybe = "optional[Inner]"
short = "Inner?"
many = "map[str, list[Inner?]]"

[records.Inner]
n = "int"
"""
    )
    outer = service.records.Outer
    value = {"inner": {"n": 1}, "maybe": None, "short": {"n": 2}, "many": {"k": [None, {"n": 3}]}}
    struct = schema.loads(HEADER).records  # an empty namespace
    assert len(struct) == 0
    import msgspec

    parsed = msgspec.convert(value, outer)
    assert parsed.many["k"][1] == service.records.Inner(n=3)
