"""The contract's error table, row by row, over real sockets on both transports."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

import callosum_like as cl

from .conftest import Blocker, PairFactory

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def within(event: asyncio.Event, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        await event.wait()


async def test_handler_exception_arrives_with_remote_traceback(make_pair: PairFactory) -> None:
    server, client = await make_pair()

    async def failing_handler(request: cl.Request) -> Any:
        raise KeyError("missing thing")

    server.handle_function("fail", failing_handler)
    with pytest.raises(cl.RPCUserError) as info:
        await client.invoke("fail")
    err = info.value
    assert isinstance(err, cl.RemoteError)
    assert isinstance(err, cl.RPCError)
    assert err.name == "KeyError"
    assert err.repr == "KeyError('missing thing')"
    assert "failing_handler" in err.traceback
    assert "Traceback" in err.traceback
    assert "failing_handler" in str(err)


async def test_custom_exception_names_its_module(make_pair: PairFactory) -> None:
    server, client = await make_pair()

    class AppError(Exception):
        pass

    async def handler(request: cl.Request) -> Any:
        raise AppError("x")

    server.handle_function("fail", handler)
    with pytest.raises(cl.RPCUserError) as info:
        await client.invoke("fail")
    assert info.value.name.endswith("AppError")


async def test_unknown_method(make_pair: PairFactory) -> None:
    _, client = await make_pair()
    with pytest.raises(cl.MethodNotFoundError) as info:
        await client.invoke("no.such.method")
    assert isinstance(info.value, cl.RemoteError)
    assert "no.such.method" in str(info.value)


async def test_unserializable_result_is_an_internal_error(make_pair: PairFactory) -> None:
    server, client = await make_pair()

    async def handler(request: cl.Request) -> Any:
        return {1, 2, 3}  # a set is not a msgpack value

    server.handle_function("bad", handler)
    with pytest.raises(cl.RPCInternalError, match="result"):
        await client.invoke("bad")
    server.handle_function("ok", lambda r: asyncio.sleep(0, "fine"))
    assert await client.invoke("ok") == "fine"


async def test_unserializable_body_is_refused_before_sending(make_pair: PairFactory) -> None:
    _, client = await make_pair()
    before = client.statistics().bytes_out
    with pytest.raises(TypeError, match="msgpack"):
        await client.invoke("x", object())
    assert client.statistics().bytes_out == before


@pytest.mark.parametrize("where", ["argument", "default"])
async def test_timeout_raises_and_cancels_the_remote_handler(
    make_pair: PairFactory, where: str
) -> None:
    client_opts = {"invoke_timeout": 0.2} if where == "default" else {}
    server, client = await make_pair(client=client_opts)
    blocker = Blocker()
    server.handle_function("block", blocker)
    with pytest.raises(TimeoutError) as info:
        await client.invoke("block", timeout=0.2 if where == "argument" else None)
    assert isinstance(info.value, cl.RPCError)
    await within(blocker.cancelled)
    assert client.statistics().calls_in_flight == 0
    assert client.statistics().errors == {"RPCTimeoutError": 1}
    assert server.statistics().dropped_messages == 0


@pytest.mark.parametrize("how", ["cancel", "scope"])
async def test_cancelling_a_call_under_a_timeout_is_no_timeout(
    make_pair: PairFactory, how: str
) -> None:
    """A call sent whole has its timeout cancel only its wait: a cancellation of the caller
    (directly, or by an ``asyncio.timeout`` scope) stays the caller's, not ``RPCTimeoutError``.
    """
    server, client = await make_pair(client={"invoke_timeout": 30})
    blocker = Blocker()
    server.handle_function("block", blocker)

    async def call() -> object:
        if how == "cancel":
            return await client.invoke("block")
        async with asyncio.timeout(0.2):
            return await client.invoke("block")

    task = asyncio.create_task(call())
    await within(blocker.started)
    if how == "cancel":
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(TimeoutError) as info:
            await task
        assert not isinstance(info.value, cl.RPCError)  # the scope's, not the call's
    await within(blocker.cancelled)
    assert client.statistics().errors == {"CancelledError": 1}
    assert client.statistics().calls_in_flight == 0


async def test_caller_cancellation_cancels_the_remote_handler(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    blocker = Blocker()
    server.handle_function("block", blocker)
    call = asyncio.create_task(client.invoke("block"))
    await within(blocker.started)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await within(blocker.cancelled)
    # The Cancel was handled, not dropped (stopping a job needs a task: the receive loop's).
    assert server.statistics().dropped_messages == 0


async def test_cancellation_crosses_the_wire_the_other_way(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    blocker = Blocker()
    client.handle_function("block", blocker)
    call = asyncio.create_task(server.invoke("block", to="agent-1"))
    await within(blocker.started)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await within(blocker.cancelled)


async def test_execute_timeout_cancels_on_the_remote(make_pair: PairFactory) -> None:
    server, client = await make_pair(execute_timeout=0.2)
    blocker = Blocker()
    server.handle_function("block", blocker)
    with pytest.raises(cl.RPCCancelledError, match="execute timeout"):
        await client.invoke("block")
    assert blocker.cancelled.is_set()


async def test_handler_raising_timeout_error_is_a_user_error(make_pair: PairFactory) -> None:
    server, client = await make_pair(execute_timeout=30)

    async def handler(request: cl.Request) -> Any:
        raise TimeoutError("the database timed out")

    server.handle_function("t", handler)
    with pytest.raises(cl.RPCUserError) as info:
        await client.invoke("t")
    assert info.value.name == "TimeoutError"


async def test_remote_closing_cancels_running_calls(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    blocker = Blocker()
    server.handle_function("block", blocker)
    call = asyncio.create_task(client.invoke("block"))
    await within(blocker.started)
    await server.aclose()
    with pytest.raises(cl.RPCCancelledError):
        await asyncio.wait_for(call, 5)
    assert blocker.cancelled.is_set()


async def test_closing_fails_our_pending_calls_and_later_invokes(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    blocker = Blocker()
    server.handle_function("block", blocker)
    call = asyncio.create_task(client.invoke("block"))
    await within(blocker.started)
    await client.aclose()
    with pytest.raises(cl.PeerClosedError):
        await call
    with pytest.raises(cl.PeerClosedError):
        await client.invoke("block")
    await within(blocker.cancelled)  # the server heard our Goodbye


async def test_invoke_before_open_is_refused() -> None:
    peer = cl.Peer(bind="tcp://127.0.0.1:0")
    with pytest.raises(cl.PeerClosedError, match="not open"):
        await peer.invoke("x")


async def test_body_over_max_body_size_is_refused_before_sending(make_pair: PairFactory) -> None:
    server, client = await make_pair(client={"max_body_size": 1000})
    server.handle_function("echo", lambda r: asyncio.sleep(0, r.body))
    before = client.statistics().bytes_out
    with pytest.raises(cl.MessageTooLargeError):
        await client.invoke("echo", b"x" * 2000)
    assert client.statistics().bytes_out == before
    assert await client.invoke("echo", b"x" * 10) == b"x" * 10


async def test_the_remotes_smaller_limit_is_honoured(make_pair: PairFactory) -> None:
    server, client = await make_pair(client={"max_body_size": 1000})
    client.handle_function("echo", lambda r: asyncio.sleep(0, r.body))
    with pytest.raises(cl.MessageTooLargeError):
        await server.invoke("echo", b"x" * 2000)  # the client announced 1000 in its Hello


async def test_a_result_over_the_callers_limit_fails_that_call_only(
    make_pair: PairFactory,
) -> None:
    server, client = await make_pair(client={"max_body_size": 10_000})

    async def big(request: cl.Request) -> Any:
        return os.urandom(request.body)  # incompressible

    server.handle_function("big", big)
    server.handle_function("small", lambda r: asyncio.sleep(0, 1))
    # Over the caller's limit, and far over its transport frame limit (limit + 1 MiB): the
    # callee answers MessageTooLargeError instead of sending it and breaking the link.
    for size in (20_000, 3 * 2**20):
        with pytest.raises(cl.MessageTooLargeError):
            await client.invoke("big", size)
    assert await client.invoke("small") == 1
    assert client.peers == {"server"}


async def test_overload_is_refused_at_once(make_pair: PairFactory) -> None:
    server, client = await make_pair(max_concurrency=1, max_pending=2)
    blocker = Blocker()
    server.handle_function("block", blocker)
    held = [asyncio.create_task(client.invoke("block")) for _ in range(2)]
    await within(blocker.started)
    with pytest.raises(cl.OverloadedError):
        await client.invoke("block")
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_the_late_answer_to_an_abandoned_call_is_expected_not_garbage(
    make_pair: PairFactory,
) -> None:
    server, client = await make_pair()
    started = asyncio.Event()

    async def hang(request: cl.Request) -> None:
        started.set()
        await asyncio.Event().wait()

    async def echo(request: cl.Request) -> Any:
        return request.body

    server.handle_function("hang", hang)
    server.handle_function("echo", echo)
    call = asyncio.create_task(client.invoke("hang"))
    await started.wait()
    call.cancel()  # the client sends Cancel; the server answers Cancelled, which comes late
    with pytest.raises(asyncio.CancelledError):
        await call
    async with asyncio.timeout(10):
        while server.statistics().request_errors.get("RPCCancelledError") != 1:
            await asyncio.sleep(0.005)
    assert await client.invoke("echo", 1) == 1  # its reply comes after the Cancelled one
    assert client.statistics().dropped_messages == 0
