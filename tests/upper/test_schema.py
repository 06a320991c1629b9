"""Schema services over real peers (both transports): round trips, errors, checks, options."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import callosum_like as cl
from callosum_like.upper import schema

from ..conftest import PairFactory
from .conftest import (
    KV_SCHEMA,
    SIMPLE_SCHEMA,
    SchemaSimple,
    check_one_key_runs_serialized,
    schema_kvstore,
    until,
)

pytestmark = pytest.mark.timeout(30)

S = SIMPLE_SCHEMA


async def simple_pair(make_pair: PairFactory) -> tuple[cl.Peer, cl.Peer, SchemaSimple, Any]:
    """A server serving ``Simple`` and the agent's client of it."""
    server, agent = await make_pair()
    handler = SchemaSimple()
    schema.SchemaServer(S, handler).attach(server)
    return server, agent, handler, schema.SchemaClient(agent, S)


def everything() -> Any:
    return S.records.Everything(
        flag=True,
        number=2**63 - 1,
        real=-0.0,
        text="✓",
        blob=bytes(range(256)),
        numbers=[-(2**63), 0],
        points={"o": S.records.Point(x=1.0, y=2.0)},
        by_id={1: "one", -1: "minus one"},
        by_bytes={b"\x00": False},
        note="a note",
        maybe=S.records.Point(x=0.5, y=0.25),
        nested=[[b""], [b"x", b"y"]],
        anything=[None, {"k": b"v"}, 1.5],
        count=-1,
    )


@pytest.mark.asyncio
async def test_round_trip_of_every_type(make_pair: PairFactory) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    sent = everything()
    got = await simple.mirror(sent)
    assert isinstance(got, S.records.Everything)
    assert got == sent


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "expected"),
    [
        ("ping", (), {}, None),
        ("echo", ("",), {}, ""),
        ("echo", ("ünïcödé " * 1000,), {}, "ünïcödé " * 1000),
        ("echo_bytes", (bytes(range(256)) * 100,), {}, bytes(range(256)) * 100),
        ("add", (2**62, 2**62 - 1), {}, 2**63 - 1),
        ("add", (), {"b": 1, "a": 2}, 3),
        ("divide", (1, 4), {}, 0.25),
        ("group_by_length", (["a", "bb", "cc"],), {}, {1: ["a"], 2: ["bb", "cc"]}),
        (
            "depth",
            ({"label": "r", "children": [{"label": "c", "children": [{"label": "g"}]}]},),
            {},
            3,
        ),
        ("find", ([4, 5, 6], 6), {}, 2),
        ("find", ([4, 5, 6], 7), {}, None),
        ("greet", ("bob",), {}, "hello, bob"),
        ("greet", ("bob",), {"punctuation": "!", "greeting": "hi"}, "hi, bob!"),
        ("events", (), {}, []),
    ],
)
@pytest.mark.asyncio
async def test_round_trips(
    make_pair: PairFactory,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    expected: Any,
) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    assert await getattr(simple, method)(*args, **kwargs) == expected


@pytest.mark.asyncio
async def test_declared_errors_arrive_as_the_same_type_with_their_fields(
    make_pair: PairFactory,
) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    with pytest.raises(S.errors.Oops) as caught:
        await simple.divide(1, 0)
    assert (caught.value.message, caught.value.code) == ("division by zero", 22)
    assert "raised by the remote handler of Simple.divide" in caught.value.__notes__
    with pytest.raises(S.errors.Unlucky) as unlucky:
        await simple.fail("unlucky")
    assert unlucky.value.number == 13
    with pytest.raises(schema.ServiceError):  # the common base class
        await simple.fail("oops")


@pytest.mark.asyncio
async def test_undeclared_errors_arrive_as_rpc_user_error(make_pair: PairFactory) -> None:
    server, agent = await make_pair()

    class Handler(SchemaSimple):
        def add(self, a: int, b: int) -> int:
            raise S.errors.Oops(message="add does not declare Oops", code=1)

    schema.SchemaServer(S, Handler()).attach(server)
    simple = schema.SchemaClient(agent, S)
    with pytest.raises(cl.RPCUserError) as caught:
        await simple.fail("other")
    assert caught.value.name == "KeyError"
    assert "in fail" in caught.value.traceback
    with pytest.raises(cl.RPCUserError) as caught:
        await simple.add(1, 2)
    assert caught.value.name.endswith("Oops")
    assert "add does not declare Oops" in caught.value.repr


@pytest.mark.asyncio
async def test_a_bad_result_is_a_remote_schema_error(make_pair: PairFactory) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    with pytest.raises(cl.RPCUserError) as caught:
        await simple.fail("wrong type")
    assert caught.value.name.endswith("SchemaError")
    assert "Simple.fail: bad result: Expected `int`, got `str`" in caught.value.repr


@pytest.mark.asyncio
async def test_oneway_returns_none_and_reports_no_handler_error(
    make_pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    assert await simple.notify("first") is None
    assert await simple.notify("explode") is None
    assert await simple.notify(event="second") is None
    assert await simple.events() == ["first", "second"]
    assert "oneway Simple.notify from 'agent-1' raised" in caplog.text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.add("1", 2), "Simple.add: bad arguments: Expected `int`, got `str` - at `a`"),
        (lambda s: s.add(1), "Simple.add: bad arguments: Object missing required field `b`"),
        (lambda s: s.add(1, 2, 3), "Simple.add: takes 2 arguments, 3 were given"),
        (lambda s: s.add(1, c=2), "Simple.add: bad arguments: Object contains unknown field `c`"),
        (lambda s: s.echo_bytes("not bytes"), "Expected `bytes`, got `str` - at `data`"),
        (lambda s: s.mirror({"flag": True}), "Object missing required field `number` - at `value`"),
        (lambda s: s.depth({"label": 1}), "Expected `str`, got `int` - at `tree.label`"),
    ],
)
@pytest.mark.asyncio
async def test_bad_calls_raise_schema_error_before_anything_is_sent(
    make_pair: PairFactory, call: Any, message: str
) -> None:
    _, agent, handler, simple = await simple_pair(make_pair)
    before = agent.statistics().calls_out
    with pytest.raises(cl.SchemaError) as caught:
        await call(simple)
    assert message in str(caught.value)
    assert agent.statistics().calls_out == before
    assert handler.calls == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"a": "1", "b": 2}, "Simple.add: bad arguments: Expected `int`, got `str` - at `a`"),
        ({"a": 1}, "Simple.add: bad arguments: Object missing required field `b`"),
        ({"a": 1, "b": 2, "c": 3}, "Simple.add: bad arguments: Object contains unknown field `c`"),
        ([1, 2], "Simple.add: bad arguments: Expected `object`, got `array`"),
        (None, "Simple.add: bad arguments: Expected `object`, got `null`"),
        (b"\x00", "Simple.add: bad arguments: Expected `object`, got `bytes`"),
    ],
)
@pytest.mark.asyncio
async def test_the_server_rejects_a_bad_payload_sent_with_raw_invoke(
    make_pair: PairFactory, body: Any, message: str
) -> None:
    _, agent, handler, _ = await simple_pair(make_pair)
    with pytest.raises(cl.RPCUserError) as caught:
        await agent.invoke("Simple.add", body)
    assert caught.value.name.endswith("SchemaError")
    assert message in caught.value.repr
    assert handler.calls == 0


@pytest.mark.asyncio
async def test_the_wire_form_is_plain_msgpack(make_pair: PairFactory) -> None:
    _, agent, _, _ = await simple_pair(make_pair)
    assert await agent.invoke("Simple.add", {"a": 1, "b": 2}) == {"result": 3}
    assert await agent.invoke("Simple.divide", {"a": 1, "b": 0}) == {
        "error": "Oops",
        "fields": {"message": "division by zero", "code": 22},
    }


@pytest.mark.asyncio
async def test_the_client_rejects_a_malformed_reply(make_pair: PairFactory) -> None:
    server, agent = await make_pair()

    async def impostor(request: cl.Request) -> Any:
        return {"result": "three"}

    server.handle_function("Simple.add", impostor)
    with pytest.raises(cl.SchemaError, match=r"Simple\.add: bad result: Expected `int`, got `str`"):
        await schema.SchemaClient(agent, S).add(1, 2)


@pytest.mark.asyncio
async def test_calls_in_both_directions_over_one_connection(make_pair: PairFactory) -> None:
    server, agent = await make_pair()
    schema.SchemaServer(KV_SCHEMA, schema_kvstore()).attach(server)
    schema.SchemaServer(S, SchemaSimple()).attach(agent)
    to_agent = schema.SchemaClient(server, S, to="agent-1")
    kv = schema.SchemaClient(agent, KV_SCHEMA)
    results = await asyncio.gather(  # a list at run time (typeshed says tuple)
        to_agent.echo("from the manager"),
        kv.put("k", b"from the agent", ["t"]),
        to_agent.add(40, 2),
        kv.get("k"),
    )
    assert list(results) == ["from the manager", True, 42, b"from the agent"]
    with pytest.raises(KV_SCHEMA.errors.KeyNotFound) as missing:
        await kv.get("nope")
    assert missing.value.key == "nope"
    with pytest.raises(KV_SCHEMA.errors.StoreFull) as full:
        for key in "abcd":
            await kv.put(key, b"")
    assert full.value.capacity == 3
    entries = await kv.scan()
    assert entries[0] == KV_SCHEMA.records.Entry(key="a", value=b"", tags=[])
    assert [entry.key for entry in await kv.scan("k")] == ["k"]
    assert await kv.remove("a") is None
    assert await kv.size() == 2
    assert await kv.clear() is None
    assert await kv.size() == 0


@pytest.mark.asyncio
async def test_thrift_and_schema_services_on_one_peer(make_pair: PairFactory) -> None:
    from callosum_like.upper.thrift import ThriftClient, ThriftServer

    from .conftest import KV_THRIFT, SIMPLE_THRIFT, ThriftSimple, thrift_kvstore

    server, agent = await make_pair()
    thrift_kv, schema_kv = thrift_kvstore(), schema_kvstore()
    # The same service in both IDLs: serve them under different names.
    ThriftServer(KV_THRIFT.KVStore, thrift_kv, name="thrift.KVStore").attach(server)
    schema.SchemaServer(KV_SCHEMA, schema_kv, name="schema.KVStore").attach(server)
    ThriftServer(SIMPLE_THRIFT.Simple, ThriftSimple()).attach(server)  # "Simple.*"
    schema.SchemaServer(S, SchemaSimple(), name="SchemaSimple").attach(server)
    by_thrift = ThriftClient(agent, KV_THRIFT.KVStore, name="thrift.KVStore")
    by_schema = schema.SchemaClient(agent, KV_SCHEMA, name="schema.KVStore")
    assert list(
        await asyncio.gather(
            by_thrift.put("t", b"1", []),
            by_schema.put("s", b"2"),
            ThriftClient(agent, SIMPLE_THRIFT.Simple).add(1, 2),
            schema.SchemaClient(agent, S, name="SchemaSimple").add(3, 4),
        )
    ) == [True, True, 3, 7]
    assert set(thrift_kv.data) == {"t"}
    assert set(schema_kv.data) == {"s"}
    with pytest.raises(KV_THRIFT.KeyNotFound):
        await by_thrift.get("s")
    with pytest.raises(KV_SCHEMA.errors.KeyNotFound):
        await by_schema.get("t")


class Recorder(SchemaSimple):
    """A Simple whose echo records its callers, the order they started in and how many run.

    Each call is held until the test opens ``gate``; ``"too slow"`` is never answered.
    """

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.started: list[str] = []
        self.seen: list[tuple[str, str | None, dict[str, Any], str]] = []
        self.gate = asyncio.Event()

    async def echo(self, text: str) -> str:
        request = schema.current_request()
        self.seen.append(
            (request.peer_id, request.order_key, dict(request.headers), request.method)
        )
        self.started.append(text)
        self.running += 1
        try:
            if text == "too slow":
                await asyncio.Event().wait()  # only the caller's timeout ends this call
            await self.gate.wait()
        finally:
            self.running -= 1
        return text


@pytest.mark.asyncio
async def test_order_keys_timeouts_and_headers_are_client_options(make_pair: PairFactory) -> None:
    server, agent = await make_pair()
    recorder = Recorder()
    schema.SchemaServer(S, recorder).attach(server, ordering={"echo": cl.Ordering.SERIALIZED})
    simple = schema.SchemaClient(agent, S, order_key="k", headers={"token": b"secret"})
    other = simple.with_options(order_key="m")
    await check_one_key_runs_serialized(
        server, recorder.started, recorder.gate, simple.echo, other.echo
    )
    assert recorder.seen[0] == ("agent-1", "k", {"token": b"secret"}, "Simple.echo")

    recorder.gate.clear()
    texts = [str(i) for i in range(5)]
    calls = [asyncio.ensure_future(simple.with_options(order_key=t).echo(t)) for t in texts]
    await until(lambda: recorder.running == 5, "5 calls of 5 keys run at once")
    recorder.gate.set()
    assert await asyncio.gather(*calls) == texts

    unkeyed = simple.with_options(order_key=None, timeout=0.1)
    assert unkeyed.options == schema.CallOptions(timeout=0.1, headers={"token": b"secret"})
    with pytest.raises(TimeoutError):
        await unkeyed.echo("too slow")


@pytest.mark.asyncio
async def test_detach_and_custom_names(make_pair: PairFactory) -> None:
    server, agent = await make_pair()
    schema_server = schema.SchemaServer(S, SchemaSimple(), name="svc")
    assert schema_server.methods == {name: f"svc.{name}" for name in S.methods}
    assert schema_server.service is S
    schema_server.attach(server)
    client = schema.SchemaClient(agent, S, name="svc")
    assert client.service is S
    assert client.name == "svc"
    assert await client.add(1, 1) == 2
    schema_server.detach(server)
    with pytest.raises(cl.MethodNotFoundError):
        await client.add(1, 1)


def test_misuse_raises_type_and_value_errors() -> None:
    peer = cl.Peer(connect="tcp://127.0.0.1:1")  # never entered: nothing is opened
    with pytest.raises(TypeError, match=r"must be a schema\.Service"):
        schema.SchemaServer(object(), SchemaSimple())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must be a schema\.Service"):
        schema.SchemaClient(peer, "idl/simple.schema.toml")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler object has no method 'ping'"):
        schema.SchemaServer(S, object())
    with pytest.raises(TypeError, match="name must be a str"):
        schema.SchemaClient(peer, S, name=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must not be negative"):
        schema.SchemaClient(peer, S, timeout=-1)
    with pytest.raises(TypeError, match="headers must be a mapping"):
        schema.SchemaClient(peer, S, headers=[("a", "b")])  # type: ignore[arg-type]
    client = schema.SchemaClient(peer, S)
    with pytest.raises(AttributeError, match="has no function 'nope'"):
        _ = client.nope
    assert set(S.methods) <= set(dir(client))


@pytest.mark.asyncio
async def test_declared_errors_are_recognised_by_name_across_loads(
    make_pair: PairFactory,
) -> None:
    server, agent = await make_pair()
    own_copy = schema.load(S.source)  # the handler's own load of the same file

    class Handler(SchemaSimple):
        def divide(self, a: float, b: float) -> float:
            raise own_copy.errors.Oops(message="from another load", code=5)

    schema.SchemaServer(S, Handler()).attach(server)
    with pytest.raises(S.errors.Oops) as caught:
        await schema.SchemaClient(agent, S).divide(1, 0)
    assert caught.value.fields == {"message": "from another load", "code": 5}
