"""Thrift services over real peers (both transports): every type, errors, oneway, checks."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
import thriftpy2

import callosum_like as cl
from callosum_like.upper.thrift import ThriftClient, ThriftServer, current_request

from ..conftest import PairFactory
from .conftest import (
    KV_THRIFT,
    SIMPLE_THRIFT,
    ThriftSimple,
    check_one_key_runs_serialized,
    thrift_kvstore,
    until,
)

pytestmark = pytest.mark.timeout(30)

S = SIMPLE_THRIFT


async def simple_pair(make_pair: PairFactory) -> tuple[cl.Peer, cl.Peer, ThriftSimple, Any]:
    """A server serving ``Simple`` and the agent's client of it."""
    server, agent = await make_pair()
    handler = ThriftSimple()
    ThriftServer(S.Simple, handler).attach(server)
    return server, agent, handler, ThriftClient(agent, S.Simple)


def everything() -> Any:
    return S.Everything(
        flag=True,
        tiny=-128,
        small=-(2**15),
        medium=2**31 - 1,
        large=-(2**63),
        real=-1.5e300,
        text="héllo ✓",
        blob=b"\x00\xff" * 100,
        numbers=[0, -1, 2**31 - 1],
        tags={"a", "b"},
        points={"origin": S.Point(x=0.0, y=0.0), "far": S.Point(x=1e9, y=-1e-9)},
        color=S.Color.BLUE,
        note="set",
        nested=[[b"a", b""], []],
        flags={2**40: True, -1: False},
    )


@pytest.mark.asyncio
async def test_round_trip_of_every_type(make_pair: PairFactory) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    sent = everything()
    got = await simple.mirror(sent)
    assert isinstance(got, S.Everything)
    # thriftpy2 reads a set<...> back as a list; everything else is equal as sent.
    assert set(got.tags) == sent.tags
    got.tags = sent.tags
    assert got == sent


@pytest.mark.asyncio
async def test_round_trip_of_defaults_and_unset_optionals(make_pair: PairFactory) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    got = await simple.mirror(S.Everything(text="only this"))
    assert got.text == "only this"
    assert got.note is None
    assert got.numbers is None


@pytest.mark.parametrize(
    ("function", "args", "expected"),
    [
        ("ping", (), None),
        ("echo", ("",), ""),
        ("echo", ("ünïcödé " * 1000,), "ünïcödé " * 1000),
        ("echo_binary", (bytes(range(256)),), bytes(range(256))),
        ("echo_binary", (b"",), b""),
        ("add", (2**62, 2**62 - 1), 2**63 - 1),
        ("add", (-(2**63), 0), -(2**63)),
        ("divide", (1.0, 4.0), 0.25),
        ("group_by_length", (["a", "bb", "cc", ""],), {1: ["a"], 2: ["bb", "cc"], 0: [""]}),
        ("group_by_length", ([],), {}),
        ("next_color", (S.Color.BLUE,), S.Color.RED),
        ("events", (), []),
    ],
)
@pytest.mark.asyncio
async def test_round_trips(
    make_pair: PairFactory, function: str, args: tuple[Any, ...], expected: Any
) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    assert await getattr(simple, function)(*args) == expected


@pytest.mark.asyncio
async def test_arguments_by_name_and_special_floats(make_pair: PairFactory) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    assert await simple.add(b=1, a=2) == 3
    assert await simple.divide(1.0, b=math.inf) == 0.0
    assert math.isnan(await simple.divide(math.nan, 1.0))


@pytest.mark.asyncio
async def test_declared_exceptions_arrive_as_the_same_type_with_their_fields(
    make_pair: PairFactory,
) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    with pytest.raises(S.Oops) as caught:
        await simple.divide(1.0, 0.0)
    assert caught.value.message == "division by zero"
    assert caught.value.code == 22
    with pytest.raises(S.Oops) as caught:
        await simple.fail("oops")
    assert (caught.value.message, caught.value.code) == ("as requested", 7)
    with pytest.raises(S.Unlucky) as unlucky:
        await simple.fail("unlucky")
    assert unlucky.value.number == 13


@pytest.mark.asyncio
async def test_undeclared_exceptions_arrive_as_rpc_user_error(make_pair: PairFactory) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    with pytest.raises(cl.RPCUserError) as caught:
        await simple.fail("something else")
    assert caught.value.name == "KeyError"
    assert "something else" in caught.value.repr
    assert "in fail" in caught.value.traceback


@pytest.mark.asyncio
async def test_a_result_the_handler_cannot_send_is_a_remote_schema_error(
    make_pair: PairFactory,
) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    for kind in ("none", "wrong type"):
        with pytest.raises(cl.RPCUserError) as caught:
            await simple.fail(kind)
        assert caught.value.name.endswith("SchemaError")
        assert "Simple.fail" in caught.value.repr


@pytest.mark.asyncio
async def test_oneway_returns_none_and_reports_no_handler_error(
    make_pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, _, simple = await simple_pair(make_pair)
    assert await simple.notify("first") is None
    assert await simple.notify("explode") is None  # raised on the server; nobody is told
    assert await simple.notify("second") is None
    assert await simple.events() == ["first", "second"]
    assert "oneway Simple.notify from 'agent-1' raised" in caplog.text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda simple: simple.add("1", 2), "Field 'a(1)' of 'add_args' needs type 'I64'"),
        (lambda simple: simple.add(1, 2**64), "Field 'b(2)' of 'add_args' needs type 'I64'"),
        (lambda simple: simple.add(1, 2, 3), "Simple.add: takes 2 arguments, 3 were given"),
        (lambda simple: simple.add(1, c=2), "Simple.add: unknown argument 'c'"),
        (lambda simple: simple.add(1, a=2), "Simple.add: argument 'a' given twice"),
        (lambda simple: simple.echo(7), "Field 'text(1)' of 'echo_args' needs type 'STRING'"),
        (
            lambda simple: simple.mirror(S.Everything(numbers=[1, "x"])),
            "Field 'numbers(9)' of 'Everything' needs type 'LIST<I32>'",
        ),
    ],
)
@pytest.mark.asyncio
async def test_bad_calls_raise_schema_error_before_anything_is_sent(
    make_pair: PairFactory, call: Any, message: str
) -> None:
    _, agent, handler, simple = await simple_pair(make_pair)
    before = agent.statistics().calls_out
    with pytest.raises(cl.SchemaError, match=r"^Simple\.") as caught:
        await call(simple)
    assert message in str(caught.value)
    assert agent.statistics().calls_out == before
    assert handler.calls == 0


@pytest.mark.asyncio
async def test_required_arguments_and_defaults(make_pair: PairFactory) -> None:
    _, agent, handler, simple = await simple_pair(make_pair)
    assert await simple.greet("bob") == "hello, bob"
    assert await simple.greet("bob", punctuation="!") == "hello, bob!"
    assert await simple.greet(name="bob", greeting="hi") == "hi, bob"
    with pytest.raises(cl.SchemaError, match=r"Simple\.greet: missing required argument 'name'"):
        await simple.greet(greeting="hi")
    with pytest.raises(cl.RPCUserError, match=r"Simple\.greet: missing required argument 'name'"):
        await agent.invoke("Simple.greet", b"\x00")  # an empty greet_args struct
    assert handler.calls == 3


@pytest.mark.parametrize(
    "body",
    [None, "a str", 17, {"key": "x"}, [b"\x0b"], b"\x0b\x00\x01\x00\x00\x00\x09trunc", b"\x0b\x00"],
)
@pytest.mark.asyncio
async def test_the_server_rejects_a_bad_body_sent_with_raw_invoke(
    make_pair: PairFactory, body: Any
) -> None:
    _, agent, handler, _ = await simple_pair(make_pair)
    with pytest.raises(cl.RPCUserError) as caught:
        await agent.invoke("Simple.echo", body)
    assert caught.value.name.endswith("SchemaError")
    assert "Simple.echo: the request body" in caught.value.repr
    assert "echo_args" in caught.value.repr
    assert handler.calls == 0


@pytest.mark.asyncio
async def test_the_client_rejects_a_malformed_reply(make_pair: PairFactory) -> None:
    server, agent = await make_pair()

    async def impostor(request: cl.Request) -> Any:
        return {"not": "thrift"} if request.method.endswith("echo") else b"\x0b\x00\x00\xff"

    for function in ("echo", "add"):
        server.handle_function(f"Simple.{function}", impostor)
    simple = ThriftClient(agent, S.Simple)
    with pytest.raises(
        cl.SchemaError, match=r"Simple.echo: the reply body must be .* \(bytes\), not dict"
    ):
        await simple.echo("x")
    with pytest.raises(cl.SchemaError, match=r"Simple\.add: the reply body is not"):
        await simple.add(1, 2)


@pytest.mark.asyncio
async def test_calls_in_both_directions_over_one_connection(make_pair: PairFactory) -> None:
    server, agent = await make_pair()
    kv = thrift_kvstore()
    ThriftServer(KV_THRIFT.KVStore, kv).attach(server)  # the manager serves the KV store
    ThriftServer(S.Simple, ThriftSimple()).attach(agent)  # the agent serves Simple
    to_agent = ThriftClient(server, S.Simple, to="agent-1")
    to_server = ThriftClient(agent, KV_THRIFT.KVStore)
    results = await asyncio.gather(  # a list at run time (typeshed says tuple)
        to_agent.echo("from the manager"),
        to_server.put("k", b"from the agent", ["t"]),
        to_agent.add(40, 2),
        to_server.get("k"),
    )
    assert list(results) == ["from the manager", True, 42, b"from the agent"]
    with pytest.raises(KV_THRIFT.KeyNotFound):
        await to_server.get("nope")
    with pytest.raises(KV_THRIFT.StoreFull) as full:
        for key in "abcd":
            await to_server.put(key, b"", [])
    assert full.value.capacity == 3
    entries = await to_server.scan("")
    assert [(entry.key, entry.value, entry.tags) for entry in entries][:1] == [("a", b"", [])]
    assert await to_server.size() == 3
    assert await to_server.clear() is None
    assert await to_server.size() == 0


@pytest.mark.asyncio
async def test_a_custom_name_prefixes_the_peer_methods(make_pair: PairFactory) -> None:
    server, agent = await make_pair()
    thrift_server = ThriftServer(S.Simple, ThriftSimple(), name="v2.simple")
    assert thrift_server.methods["echo"] == "v2.simple.echo"
    thrift_server.attach(server)
    assert await ThriftClient(agent, S.Simple, name="v2.simple").echo("hi") == "hi"
    with pytest.raises(cl.MethodNotFoundError):
        await ThriftClient(agent, S.Simple).echo("hi")
    thrift_server.detach(server)
    with pytest.raises(cl.MethodNotFoundError):
        await ThriftClient(agent, S.Simple, name="v2.simple").echo("hi")


class Recorder(ThriftSimple):
    """A Simple whose echo records its callers, the order they started in and how many run.

    Each call is held until the test opens ``gate``; ``"too slow"`` is never answered.
    """

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.started: list[str] = []
        self.seen: list[tuple[str, str | None, dict[str, Any]]] = []
        self.gate = asyncio.Event()

    async def echo(self, text: str) -> str:
        request = current_request()
        self.seen.append((request.peer_id, request.order_key, dict(request.headers)))
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
    ThriftServer(S.Simple, recorder).attach(server, ordering=cl.Ordering.SERIALIZED)
    simple = ThriftClient(agent, S.Simple, headers={"trace": "t1"})
    keyed = simple.with_options(order_key="k")
    assert keyed.options.order_key == "k"
    assert simple.options.order_key is None
    other = keyed.with_options(order_key="m")
    await check_one_key_runs_serialized(
        server, recorder.started, recorder.gate, keyed.echo, other.echo
    )
    assert recorder.seen[0] == ("agent-1", "k", {"trace": "t1"})

    recorder.gate.clear()
    texts = [str(i) for i in range(5)]
    calls = [asyncio.ensure_future(simple.with_options(order_key=t).echo(t)) for t in texts]
    await until(lambda: recorder.running == 5, "5 calls of 5 keys run at once")
    recorder.gate.set()
    assert await asyncio.gather(*calls) == texts

    with pytest.raises(TimeoutError):
        await keyed.with_options(timeout=0.1).echo("too slow")


@pytest.mark.asyncio
async def test_per_function_ordering(make_pair: PairFactory) -> None:
    server, agent = await make_pair()
    recorder = Recorder()
    ThriftServer(S.Simple, recorder).attach(server, ordering={"echo": cl.Ordering.SERIALIZED})
    keyed = ThriftClient(agent, S.Simple, order_key="same")
    calls = [asyncio.ensure_future(keyed.echo(str(i))) for i in range(4)]
    await until(lambda: server.statistics().requests_in_flight == 4, "the 4 calls arrive")
    marker = asyncio.ensure_future(keyed.with_options(order_key="other").echo("marker"))
    await until(lambda: "marker" in recorder.started, "the call of key 'other' starts")
    assert recorder.started == ["0", "marker"]  # the other 3 wait: echo is serialized
    recorder.gate.set()
    assert await asyncio.gather(*calls) == ["0", "1", "2", "3"]
    assert await marker == "marker"
    assert recorder.started == ["0", "marker", "1", "2", "3"]


def test_misuse_raises_type_and_value_errors() -> None:
    with pytest.raises(TypeError, match="thriftpy2 service class"):
        ThriftServer(object(), ThriftSimple())
    with pytest.raises(TypeError, match="handler object has no method 'ping'"):
        ThriftServer(S.Simple, object())
    with pytest.raises(ValueError, match="name must not be empty"):
        ThriftServer(S.Simple, ThriftSimple(), name="")
    with pytest.raises(ValueError, match="unknown functions: nope"):
        ThriftServer(S.Simple, ThriftSimple()).attach(
            cl.Peer(bind="tcp://127.0.0.1:1"), ordering={"nope": cl.Ordering.ORDERED}
        )
    with pytest.raises(TypeError, match="must be a callosum_like Peer"):
        ThriftClient(object(), S.Simple)  # type: ignore[arg-type]


def test_client_options_are_checked() -> None:
    peer = cl.Peer(connect="tcp://127.0.0.1:1")  # never entered: nothing is opened
    client = ThriftClient(peer, S.Simple)
    with pytest.raises(ValueError, match="timeout must not be negative"):
        client.with_options(timeout=-1)
    with pytest.raises(TypeError, match="order_key must be a str"):
        client.with_options(order_key=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.with_options(retries=3)  # type: ignore[call-arg]
    with pytest.raises(AttributeError, match="has no function 'nope'"):
        _ = client.nope
    assert {"echo", "notify", "with_options"} <= set(dir(client))
    assert client.echo.__qualname__ == "Simple.echo"
    assert "Simple" in repr(client)


def test_current_request_outside_a_handler() -> None:
    with pytest.raises(LookupError, match="only inside a handler method"):
        current_request()


@pytest.mark.asyncio
async def test_positional_arguments_follow_declaration_order_not_field_ids(
    make_pair: PairFactory, tmp_path: Path
) -> None:
    idl = tmp_path / "order.thrift"
    idl.write_text("service Order { string join(3: string c, 1: string a, 2: string b) }\n")
    order = thriftpy2.load(str(idl), module_name="order_thrift")

    class Join:
        def join(self, c: str, a: str, b: str) -> str:
            return f"c={c} a={a} b={b}"

    server, agent = await make_pair()
    ThriftServer(order.Order, Join()).attach(server)
    client = ThriftClient(agent, order.Order)
    assert await client.join("1", "2", "3") == "c=1 a=2 b=3"
    assert await client.join("1", b="3", a="2") == "c=1 a=2 b=3"


def test_options_keep_a_copy_of_the_headers() -> None:
    headers = {"trace": "a"}
    client = ThriftClient(cl.Peer(connect="tcp://127.0.0.1:1"), S.Simple, headers=headers)
    headers["trace"] = "changed"
    assert client.options.headers == {"trace": "a"}
    with pytest.raises(TypeError):
        client.options.headers["x"] = "y"  # type: ignore[index]
