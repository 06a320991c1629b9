"""Observability: ``peer.statistics()`` counters and gauges, and the per-RPC debug log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

import callosum_like as cl

from .conftest import PairFactory

pytestmark = pytest.mark.timeout(30)


async def echo(request: cl.Request) -> Any:
    return request.body


async def fail(request: cl.Request) -> Any:
    raise ValueError("no")


@pytest.fixture
def rpc_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="callosum_like.rpc")
    return caplog


@pytest.mark.asyncio
async def test_statistics_count_both_sides_by_kind(make_pair: PairFactory) -> None:
    server, client = await make_pair(max_concurrency=1, max_pending=2)
    gate = asyncio.Event()
    started = asyncio.Event()

    async def wait(request: cl.Request) -> Any:
        started.set()
        await gate.wait()
        return request.body

    server.handle_function("echo", echo)
    server.handle_function("fail", fail)
    server.handle_function("wait", wait)
    assert await client.invoke("echo", 1) == 1
    with pytest.raises(cl.RPCUserError):
        await client.invoke("fail")
    with pytest.raises(cl.MethodNotFoundError):
        await client.invoke("nothing")
    held = [asyncio.create_task(client.invoke("wait", i)) for i in range(2)]
    async with asyncio.timeout(5):
        await started.wait()
        while server.statistics().requests_in_flight < 2:
            await asyncio.sleep(0.01)
    with pytest.raises(cl.OverloadedError):
        await client.invoke("wait", 3)

    busy = server.statistics()
    assert (busy.requests_running, busy.requests_queued, busy.requests_in_flight) == (1, 1, 2)
    assert client.statistics().calls_in_flight == 2
    gate.set()
    assert await asyncio.gather(*held) == [0, 1]

    served, called = server.statistics(), client.statistics()
    assert served.calls_in == called.calls_out == 6
    assert served.requests_refused == 1
    assert dict(served.request_errors) == {
        "RPCUserError": 1,
        "MethodNotFoundError": 1,
        "OverloadedError": 1,
    }
    assert dict(called.errors) == dict(served.request_errors)
    assert (served.requests_in_flight, called.calls_in_flight) == (0, 0)
    assert served.bytes_in == called.bytes_out > 0
    assert served.connected_peers == called.connected_peers == 1
    assert (served.reconnects, served.disconnects, served.slow_remotes_dropped) == (0, 0, 0)
    with pytest.raises(AttributeError):
        served.calls_in = 0  # type: ignore[misc]


@pytest.mark.asyncio
async def test_a_client_leaving_is_a_disconnect(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    await client.aclose()
    async with asyncio.timeout(5):
        while server.statistics().connected_peers:
            await asyncio.sleep(0.01)
    assert server.statistics().disconnects == 1


@pytest.mark.asyncio
async def test_rpc_log_records_each_call_with_its_time_and_outcome(
    make_pair: PairFactory, rpc_log: pytest.LogCaptureFixture
) -> None:
    server, client = await make_pair()
    server.handle_function("echo", echo)
    server.handle_function("fail", fail)
    await client.invoke("echo", "x")
    with pytest.raises(cl.RPCUserError):
        await client.invoke("fail")
    with pytest.raises(cl.MethodNotFoundError):
        await client.invoke("nothing")
    with pytest.raises(TimeoutError):
        await client.invoke("echo", timeout=0)
    expected = {
        ("invoked", "echo", "ok"),
        ("served", "echo", "ok"),
        ("invoked", "fail", "RPCUserError"),
        ("served", "fail", "RPCUserError"),
        ("invoked", "nothing", "MethodNotFoundError"),
        ("served", "nothing", "MethodNotFoundError"),
        ("invoked", "echo", "RPCTimeoutError"),
    }

    def outcomes() -> set[tuple[str, str, str]]:
        return {
            (r.rpc_direction, r.rpc_method, r.rpc_outcome)  # type: ignore[attr-defined]
            for r in rpc_log.records
            if r.name == "callosum_like.rpc"
        }

    # The server logs a call once it has sent the answer: maybe after the caller has it.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while not expected <= outcomes():
                await asyncio.sleep(0.01)
    assert expected <= outcomes()

    records = [r for r in rpc_log.records if r.name == "callosum_like.rpc"]
    invoked = next(r for r in records if r.rpc_direction == "invoked")  # type: ignore[attr-defined]
    assert invoked.levelno == logging.DEBUG
    assert invoked.rpc_ms >= 0  # type: ignore[attr-defined]
    assert "invoked echo on 'server' in" in invoked.getMessage()
    served = next(r for r in records if r.rpc_direction == "served")  # type: ignore[attr-defined]
    assert served.rpc_remote == "agent-1"  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_rpc_log_is_silent_unless_enabled(
    make_pair: PairFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callosum_like")
    server, client = await make_pair()
    server.handle_function("echo", echo)
    await client.invoke("echo", 1)
    assert [r for r in caplog.records if r.name == "callosum_like.rpc"] == []


def test_every_module_logs_under_the_package_logger() -> None:
    import importlib
    import pkgutil

    import callosum_like

    for info in pkgutil.walk_packages(callosum_like.__path__, "callosum_like."):
        if info.name.startswith("callosum_like.upper"):
            continue  # optional dependencies
        module = importlib.import_module(info.name)
        logger = getattr(module, "log", None)
        if logger is not None:
            assert isinstance(logger, logging.Logger)
            assert logger.name == info.name, info.name
