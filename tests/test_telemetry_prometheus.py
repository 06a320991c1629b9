"""Prometheus: counters, histograms and gauges of real peers, scraped over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import callosum_like as cl
from callosum_like.telemetry import Prometheus

from .conftest import PairFactory, bind_address, connect_address, open_relay
from .httpget import http_get

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def scrape(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    status, _, body = await http_get(port, path, host)
    return status, body.decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def echo(request: cl.Request) -> Any:
    return request.body


async def fail(request: cl.Request) -> Any:
    raise ValueError("no")


class NoAdmin(cl.Interceptor):
    async def intercept_request(self, request: cl.Request, proceed: Any) -> Any:
        if request.method == "admin":
            raise cl.RefusedError("no")
        return await proceed(request)


def assert_counted(got: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    def value(name: str, **labels: str) -> float:
        return got[name, frozenset(labels.items())]

    calls = "callosum_like_client_calls_total"
    assert value(calls, method="echo", outcome="ok") == 3
    assert value(calls, method="fail", outcome="RPCUserError") == 1
    assert value(calls, method="admin", outcome="RefusedError") == 1
    served = "callosum_like_server_requests_total"
    assert value(served, method="echo", outcome="ok") == 3
    assert value(served, method="fail", outcome="RPCUserError") == 1
    assert value(served, method="admin", outcome="RefusedError") == 1
    seconds = "callosum_like_client_call_duration_seconds_count"
    assert value(seconds, method="echo", outcome="ok") == 3
    seconds = "callosum_like_server_request_duration_seconds_count"
    assert value(seconds, method="echo", outcome="ok") == 3


async def test_metrics_of_both_sides_are_scraped_over_http(make_pair: PairFactory) -> None:
    registry = CollectorRegistry()
    metrics = Prometheus(registry=registry)
    gate = asyncio.Event()

    async def wait(request: cl.Request) -> Any:
        await gate.wait()
        return None

    server, client = await make_pair(
        interceptors=[metrics, NoAdmin()], client={"interceptors": [metrics]}
    )
    for name, handler in (("echo", echo), ("fail", fail), ("admin", echo), ("wait", wait)):
        server.handle_function(name, handler)
    for _ in range(3):
        await client.invoke("echo", 1)
    with pytest.raises(cl.RPCUserError):
        await client.invoke("fail")
    with pytest.raises(cl.RefusedError):
        await client.invoke("admin")
    held = asyncio.create_task(client.invoke("wait"))
    endpoint = await metrics.serve(port=0)
    try:
        async with asyncio.timeout(5):
            while server.statistics().requests_running < 1:
                await asyncio.sleep(0.01)
        status, text = await scrape(endpoint.port, "/metrics")
        assert status == 200
        got = samples(text)
        assert all(name.startswith("callosum_like_") for name, _ in got)

        assert_counted(got)

        def value(name: str, **labels: str) -> float:
            return got[name, frozenset(labels.items())]

        server_peer = {"peer": "server", "address": server.address}
        client_peer = {"peer": "agent-1", "address": client.address}
        assert value("callosum_like_links", **server_peer) == 1
        assert value("callosum_like_links", **client_peer) == 1
        assert value("callosum_like_requests_running", **server_peer) == 1
        assert value("callosum_like_calls_in_flight", **client_peer) == 1
        assert value("callosum_like_bytes_sent_total", **client_peer) > 0
        assert (await scrape(endpoint.port, "/nothing"))[0] == 404
        assert (await scrape(endpoint.port, "/metrics", host="evil.example"))[0] == 403
    finally:
        gate.set()
        await held
        await endpoint.aclose()
    await client.aclose()
    _, after = await http_get_once(metrics)
    assert 'peer="agent-1"' not in after  # a closed peer is no longer gauged
    metrics.unregister()


async def http_get_once(metrics: Prometheus) -> tuple[int, str]:
    endpoint = await metrics.serve()
    try:
        return await scrape(endpoint.port, "/metrics")
    finally:
        await endpoint.aclose()


async def test_one_registry_holds_one_prometheus() -> None:
    registry = CollectorRegistry()
    Prometheus(registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Prometheus(registry=registry)
    other = Prometheus(registry=CollectorRegistry())
    other.unregister()


async def test_the_endpoint_bounds_what_it_reads() -> None:
    metrics = Prometheus(registry=CollectorRegistry())
    async with await metrics.serve() as endpoint:
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"x" * 20000 + b"\r\n\r\n")
        await writer.drain()
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert re.match(rb"HTTP/1.1 431 ", response), response[:80]
        reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
        writer.write(b"POST /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 405 ")
        writer.close()
        await writer.wait_closed()


async def test_a_relay_counts_what_it_passes_on(transport_kind: str) -> None:
    metrics = Prometheus(registry=CollectorRegistry())
    async with contextlib.AsyncExitStack() as stack:
        manager = await stack.enter_async_context(
            cl.Peer(bind=bind_address(transport_kind), identity="manager")
        )
        relay = await open_relay(
            stack, transport_kind, connect_address(manager), "rack", interceptors=[metrics]
        )
        agent = await stack.enter_async_context(
            cl.Peer(connect=connect_address(relay), identity="agent")  # type: ignore[arg-type]
        )
        agent.handle_function("echo", echo)
        agent.handle_function("fail", fail)
        await manager.wait_for_peer("rack/agent", timeout=10)
        assert await manager.invoke("echo", 1, to="rack/agent") == 1
        with pytest.raises(cl.RPCUserError):
            await manager.invoke("fail", to="rack/agent")
        async with await metrics.serve() as endpoint:
            _, text = await scrape(endpoint.port, "/metrics")
    got = samples(text)
    forwarded = "callosum_like_relay_forwarded_total"
    assert got[forwarded, frozenset({("method", "echo"), ("outcome", "ok")})] == 1
    assert got[forwarded, frozenset({("method", "fail"), ("outcome", "RPCUserError")})] == 1
    links = {labels: value for (name, labels), value in got.items() if name.endswith("_links")}
    assert sorted(links.values()) == [1, 1]  # the relay's two peers: one link each
    metrics.unregister()
