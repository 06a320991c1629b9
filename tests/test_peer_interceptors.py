"""Interceptors: around every call made and every request served, in a documented order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

import callosum_like as cl

from .conftest import PairFactory, bind_address, connect_address, open_relay

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def echo(request: cl.Request) -> Any:
    return request.body


async def fail(request: cl.Request) -> Any:
    raise ValueError("handler says no")


async def count(request: cl.Request) -> AsyncIterator[int]:
    for i in range(request.body):
        yield i


class Recorder(cl.Interceptor):
    """Writes what it sees, before and after ``proceed``, into a shared journal."""

    def __init__(self, name: str, journal: list[str]) -> None:
        self.name = name
        self.journal = journal
        self.peers: list[cl.Peer] = []

    async def intercept_call(self, call: cl.OutgoingCall, proceed: Any) -> Any:
        self.journal.append(f"{self.name} call {call.method} to={call.to} peer={call.peer}")
        call.headers[f"x-{self.name}"] = "1"
        try:
            return await proceed(call)
        finally:
            self.journal.append(f"{self.name} call done")

    async def intercept_stream(self, call: cl.OutgoingCall, proceed: Any) -> AsyncIterator[Any]:
        self.journal.append(f"{self.name} stream {call.method}")
        try:
            async for item in proceed(call):
                yield item
        finally:
            self.journal.append(f"{self.name} stream done")

    async def intercept_request(self, request: cl.Request, proceed: Any) -> Any:
        self.journal.append(f"{self.name} request {request.method} from {request.peer_id}")
        try:
            return await proceed(request)
        except Exception as exc:
            self.journal.append(f"{self.name} saw {type(exc).__name__}")
            raise
        finally:
            self.journal.append(f"{self.name} request done")

    def intercept_forward(self, call: Any) -> Any:
        self.journal.append(f"{self.name} forward {call.method} {call.caller} -> {call.callee}")
        return lambda outcome: self.journal.append(f"{self.name} forwarded {outcome}")

    def attached(self, peer: Any) -> None:
        self.peers.append(peer)

    def detached(self, peer: Any) -> None:
        self.peers.remove(peer)


async def test_order_is_outermost_first_on_both_sides(make_pair: PairFactory) -> None:
    journal: list[str] = []

    async def handler(request: cl.Request) -> Any:
        journal.append(f"handler {sorted(request.headers)}")
        return request.body

    a, b = Recorder("a", journal), Recorder("b", journal)
    server, client = await make_pair(
        interceptors=[Recorder("s1", journal), Recorder("s2", journal)],
        client={"interceptors": [a, b]},
    )
    server.handle_function("echo", handler)
    assert a.peers == [client]
    assert await client.invoke("echo", 7) == 7
    assert journal == [
        "a call echo to=None peer=server",
        "b call echo to=None peer=server",
        "s1 request echo from agent-1",
        "s2 request echo from agent-1",
        "handler ['x-a', 'x-b']",
        "s2 request done",
        "s1 request done",
        "b call done",
        "a call done",
    ]
    await client.aclose()
    assert a.peers == []


async def test_streams_pass_the_chain_and_close_it_when_left_early(
    make_pair: PairFactory,
) -> None:
    journal: list[str] = []
    server, client = await make_pair(
        interceptors=[Recorder("s", journal)], client={"interceptors": [Recorder("c", journal)]}
    )
    server.handle_function("count", count)
    assert [i async for i in client.stream("count", 3)] == [0, 1, 2]
    assert journal == [
        "c stream count",
        "s request count from agent-1",
        "s request done",
        "c stream done",
    ]
    journal.clear()
    items = client.stream("count", 1000)
    async for i in items:
        if i == 2:
            break
    await items.aclose()  # type: ignore[attr-defined]
    assert journal[-1] == "c stream done"

    async def served() -> bool:  # the remote generator was cancelled: its request is over
        return "s request done" in journal

    async with asyncio.timeout(5):
        while not await served():
            await asyncio.sleep(0.01)
    assert server.statistics().requests_in_flight == 0


async def test_handler_errors_pass_through_unchanged(make_pair: PairFactory) -> None:
    journal: list[str] = []
    server, client = await make_pair(
        interceptors=[Recorder("s", journal)], client={"interceptors": [Recorder("c", journal)]}
    )
    server.handle_function("fail", fail)
    with pytest.raises(cl.RPCUserError) as caught:
        await client.invoke("fail")
    assert caught.value.name == "ValueError"
    assert "s saw ValueError" in journal
    with pytest.raises(cl.MethodNotFoundError):  # no handler: refused before any interceptor
        await client.invoke("nothing")


class Authorizer(cl.Interceptor):
    """Lets ``agent-1`` call ``admin``; everyone may call anything else."""

    async def intercept_request(self, request: cl.Request, proceed: Any) -> Any:
        if request.method == "admin" and request.peer_id != "agent-1":
            raise cl.RefusedError(f"{request.peer_id} may not call admin")
        return await proceed(request)


async def test_a_serving_interceptor_refuses_by_peer_id(
    make_pair: PairFactory, connect_client: Any
) -> None:
    ran: list[str] = []

    async def admin(request: cl.Request) -> Any:
        ran.append(request.peer_id)
        return "done"

    server, client = await make_pair(interceptors=[Authorizer()])
    server.handle_function("admin", admin)
    server.handle_function("echo", echo)
    other = await connect_client(server, identity="agent-2")
    assert await client.invoke("admin") == "done"
    with pytest.raises(cl.RefusedError, match="agent-2 may not call admin"):
        await other.invoke("admin")
    assert await other.invoke("echo", 1) == 1
    assert ran == ["agent-1"]
    assert server.statistics().request_errors.get("RefusedError") == 1


class Limiter(cl.Interceptor):
    async def intercept_request(self, request: cl.Request, proceed: Any) -> Any:
        raise cl.OverloadedError("rate limited")


async def test_a_serving_interceptor_may_answer_any_remote_error(make_pair: PairFactory) -> None:
    server, client = await make_pair(interceptors=[Limiter()])
    server.handle_function("echo", echo)
    with pytest.raises(cl.OverloadedError, match="rate limited"):
        await client.invoke("echo", 1)


class Broken(cl.Interceptor):
    """Fails on every hook with an exception no one expects."""

    async def intercept_call(self, call: cl.OutgoingCall, proceed: Any) -> Any:
        if call.method == "boom":
            raise ZeroDivisionError("client side")
        return await proceed(call)

    async def intercept_request(self, request: cl.Request, proceed: Any) -> Any:
        if request.method == "boom":
            raise KeyError("server side")
        return await proceed(request)

    def attached(self, peer: Any) -> None:
        raise RuntimeError("attached fails too")


async def test_a_failing_interceptor_fails_its_call_only(
    make_pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="callosum_like.interceptors")
    server, client = await make_pair(interceptors=[Broken()], client={"interceptors": [Broken()]})
    server.handle_function("echo", echo)
    server.handle_function("boom", echo)
    with pytest.raises(cl.InterceptorError, match="ZeroDivisionError") as caught:
        await client.invoke("boom")
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert await client.invoke("echo", 2) == 2
    records = [r for r in caplog.records if r.name == "callosum_like.interceptors"]
    assert [r.exc_info[1].__class__ for r in records if r.exc_info] == [
        RuntimeError,  # the server's attached
        RuntimeError,  # the client's
        ZeroDivisionError,
    ]
    caplog.clear()
    # The server's interceptor fails: the caller gets RPCInternalError, the server goes on.
    async with cl.Peer(connect=connect_address(server), identity="plain") as plain:
        with pytest.raises(cl.RPCInternalError, match="KeyError"):
            await plain.invoke("boom", 1)
        assert await plain.invoke("echo", 3) == 3
    failures = [r for r in caplog.records if r.name == "callosum_like.interceptors"]
    assert len(failures) == 1
    assert "'boom'" in failures[0].getMessage()


class Refuser(cl.Interceptor):
    async def intercept_call(self, call: cl.OutgoingCall, proceed: Any) -> Any:
        raise cl.UnknownPeerError(f"not calling {call.method}")


async def test_a_calling_interceptor_refuses_before_anything_is_sent(
    make_pair: PairFactory,
) -> None:
    server, client = await make_pair(client={"interceptors": [Refuser()]})
    server.handle_function("echo", echo)
    with pytest.raises(cl.UnknownPeerError, match="not calling echo"):
        await client.invoke("echo", 1)
    results = await client.invoke_all("echo", 1)
    assert isinstance(results["server"], cl.UnknownPeerError)
    assert server.statistics().calls_in == 0


async def test_invoke_all_passes_each_call_through_the_chain(
    make_pair: PairFactory, connect_client: Any
) -> None:
    journal: list[str] = []
    server, _ = await make_pair(client={}, interceptors=[Recorder("s", journal)])
    await connect_client(server, identity="agent-2")
    for peer in (_, await connect_client(server, identity="agent-3")):
        peer.handle_function("echo", echo)
    results = await server.invoke_all("echo", 5, to=["agent-1", "agent-3", "nobody"])
    assert results["agent-1"] == results["agent-3"] == 5
    assert isinstance(results["nobody"], cl.UnknownPeerError)
    calls = sorted(line for line in journal if " call echo " in line)
    assert calls == [
        "s call echo to=agent-1 peer=agent-1",
        "s call echo to=agent-3 peer=agent-3",
        "s call echo to=nobody peer=nobody",
    ]


class BrokenForward(cl.Interceptor):
    def intercept_forward(self, call: Any) -> Any:
        if call.method == "headers" and call.caller == "manager":
            raise ZeroDivisionError("the hook")

        def done(outcome: str) -> None:
            raise ZeroDivisionError("the end")

        return done if call.caller == "agent" else None


async def test_interceptors_run_at_both_ends_of_a_call_through_relays(
    transport_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    journal: list[str] = []
    at_relay = Recorder("r", journal)
    async with contextlib.AsyncExitStack() as stack:
        manager = await stack.enter_async_context(
            cl.Peer(
                bind=bind_address(transport_kind),
                identity="manager",
                interceptors=[Recorder("m", journal)],
            )
        )
        relay = await open_relay(
            stack,
            transport_kind,
            connect_address(manager),
            "relay",
            interceptors=[at_relay, BrokenForward()],
        )
        assert len(at_relay.peers) == 2  # its peer below and its peer above
        agent = await stack.enter_async_context(
            cl.Peer(
                connect=connect_address(relay),  # type: ignore[arg-type]
                identity="agent",
                interceptors=[Recorder("g", journal)],
            )
        )

        async def headers(request: cl.Request) -> Any:
            return sorted(request.headers)

        agent.handle_function("headers", headers)
        manager.handle_function("headers", headers)
        await manager.wait_for_peer("relay/agent", timeout=10)
        assert await manager.invoke("headers", to="relay/agent") == ["x-m"]
        assert await agent.invoke("headers") == ["x-g"]  # up through the relay
    assert "g request headers from relay" in journal
    assert "m request headers from relay/agent" in journal
    at_the_relay = [line for line in journal if line.startswith("r ")]
    assert at_the_relay == [  # forwarded, not served: the hop is told, and how it ended
        "r forward headers manager -> agent",
        "r forwarded ok",
        "r forward headers agent -> manager",
        "r forwarded ok",
    ]
    assert at_relay.peers == []
    failed = [
        r.exc_info[1] for r in caplog.records if r.exc_info and r.name.endswith("interceptors")
    ]
    assert [str(exc) for exc in failed] == ["the hook", "the end"]  # logged once, ignored


async def test_interceptors_must_be_interceptors() -> None:
    with pytest.raises(TypeError, match="interceptors"):
        cl.Peer(bind="tcp://127.0.0.1:0", interceptors=Recorder("a", []))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="interceptors"):
        cl.Peer(bind="tcp://127.0.0.1:0", interceptors=[object()])  # type: ignore[list-item]


class Shortener(cl.Interceptor):
    """Gives every call a short timeout and marks it, before it leaves."""

    async def intercept_call(self, call: cl.OutgoingCall, proceed: Any) -> Any:
        call.timeout = 0.2
        call.headers["x-short"] = "yes"
        return await proceed(call)


async def test_what_an_interceptor_changes_is_what_is_sent(make_pair: PairFactory) -> None:
    started = asyncio.Event()

    async def slow(request: cl.Request) -> Any:
        started.set()
        await asyncio.sleep(10)

    async def total(request: cl.Request) -> Any:
        return [sum([item async for item in request.body]), request.headers["x-short"]]

    server, client = await make_pair(client={"interceptors": [Shortener()]})
    server.handle_function("slow", slow)
    server.handle_function("total", total)
    with pytest.raises(cl.RPCTimeoutError):
        await client.invoke("slow")  # no timeout given: the interceptor's applies
    assert started.is_set()

    async def numbers() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    assert await client.invoke("total", numbers()) == [10, "yes"]  # a streamed body too


async def test_a_refused_stream_raises_at_its_first_item(make_pair: PairFactory) -> None:
    server, client = await make_pair(interceptors=[Limiter()])
    server.handle_function("count", count)
    with pytest.raises(cl.OverloadedError, match="rate limited"):
        async for _ in client.stream("count", 3):
            pass
