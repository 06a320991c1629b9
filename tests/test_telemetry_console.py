"""The live console: its JSON over real HTTP, and its page in a real headless chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import callosum_like as cl
from callosum_like.interceptors import ForwardedCall
from callosum_like.telemetry import Console

from .conftest import bind_address, connect_address, open_relay
from .httpget import http_get

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

AGENTS = ("rack-1/agent-1", "rack-1/agent-2", "rack-1/shelf/agent-3")


class Fleet:
    """A manager (with the console), a relay, a nested relay, three agents, and load."""

    def __init__(self, console: Console, manager: cl.Peer, relay: cl.Relay) -> None:
        self.console = console
        self.manager = manager
        self.relay = relay


@pytest_asyncio.fixture
async def fleet() -> AsyncIterator[Fleet]:
    console = Console()
    async with contextlib.AsyncExitStack() as stack:
        manager = await stack.enter_async_context(
            cl.Peer(bind=bind_address("tcp"), identity="manager", interceptors=[console])
        )

        async def report(request: cl.Request) -> Any:
            return request.body

        manager.handle_function("report", report)
        relay = await open_relay(stack, "tcp", connect_address(manager), "rack-1")
        shelf = await open_relay(stack, "tcp", connect_address(relay), "shelf")  # type: ignore[arg-type]
        console.watch(relay)
        for name, above in (("agent-1", relay), ("agent-2", relay), ("agent-3", shelf)):
            agent = await stack.enter_async_context(
                cl.Peer(connect=connect_address(above), identity=name)  # type: ignore[arg-type]
            )

            async def work(request: cl.Request, agent: cl.Peer = agent) -> Any:
                await asyncio.sleep(0.002)
                return await agent.invoke("report", request.body)

            agent.handle_function("work", work)
        for name in AGENTS:
            await manager.wait_for_peer(name, timeout=10)

        async def load() -> None:
            while True:
                await manager.invoke_all("work", 1, to=AGENTS)
                await asyncio.sleep(0.01)

        running = asyncio.create_task(load())
        try:
            await stack.enter_async_context(console)
            yield Fleet(console, manager, relay)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


async def test_the_state_shows_the_tree_links_and_rates(fleet: Fleet) -> None:
    while fleet.console.state()["methods"] == [] or fleet.manager.statistics().calls_in < 3:
        await asyncio.sleep(0.05)
    status, headers, body = await http_get(fleet.console.port, "/api/state")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    state = json.loads(body)
    manager, relay = state["targets"]
    assert manager["identity"] == "manager"
    assert set(AGENTS) <= set(manager["links"])
    (rack,) = manager["tree"]["children"]
    assert rack["name"] == "rack-1"
    names = sorted(child["name"] for child in rack["children"])
    assert names == ["agent-1", "agent-2", "shelf"]
    shelf = next(child for child in rack["children"] if child["name"] == "shelf")
    assert [child["path"] for child in shelf["children"]] == ["rack-1/shelf/agent-3"]
    assert manager["statistics"]["calls_out"] >= 3
    assert relay["kind"] == "relay"
    assert relay["upstream_connected"] is True
    assert "shelf/agent-3" in relay["links"]
    methods = {(m["direction"], m["method"]): m for m in state["methods"]}
    assert methods["out", "work"]["calls"] >= 3
    assert methods["out", "work"]["rate"] > 0
    assert methods["out", "work"]["mean_ms"] > 0
    assert methods["in", "report"]["calls"] >= 3
    assert methods["out", "work"]["errors"] == 0

    status, headers, page = await http_get(fleet.console.port, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert not re.search(rb"(src|href)\s*=|<link|@import|url\(", page)  # no asset fetched
    assert (await http_get(fleet.console.port, "/api/nothing"))[0] == 404


def chromium() -> str:
    """The browser; as root (CI) it must be there: ``make install`` installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.geteuid() == 0:
            pytest.fail("chromium is not installed: `make install` as root installs it")
        pytest.skip("chromium is not installed (CI installs it as root with `make install`)")
    return found


async def browse(*argv: str, timeout: float = 60) -> bytes:
    """Run headless chromium as a child of this loop, so the fleet keeps serving."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out


async def test_the_page_draws_the_live_tree_in_a_real_browser(fleet: Fleet, tmp_path: Path) -> None:
    browser = chromium()
    common = [
        browser,
        "--headless",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",  # the page polls: let it fetch and draw
    ]
    while fleet.console.state()["methods"] == []:
        await asyncio.sleep(0.05)
    dom = (await browse(*common, "--dump-dom", fleet.console.url)).decode()
    drawn = set(re.findall(r'<li data-name="([^"]+)"', dom))
    assert {"manager", "rack-1", "rack-1/shelf", *AGENTS} <= drawn, dom[-3000:]
    assert re.search(r'<tr data-method="work">', dom), "no rates drawn"
    assert re.search(r'id="status" class="">updated ', dom), "the page did not update"

    screenshot = tmp_path / "console.png"
    await browse(
        *common,
        "--hide-scrollbars",
        "--window-size=1200,640",
        f"--screenshot={screenshot}",
        fleet.console.url,
    )
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1200, 640)
    print(f"console screenshot: {screenshot}")


async def test_a_relay_console_shows_what_passes_through() -> None:
    console = Console()
    call = ForwardedCall(method="work", relay="rack", caller="manager", callee="agent", headers={})
    ok, failed, pending = (console.intercept_forward(call) for _ in range(3))
    ok("ok")
    failed("PeerDisconnectedError")
    (via,) = console.state()["methods"]
    assert (via["direction"], via["method"]) == ("via", "work")
    assert (via["calls"], via["errors"], via["in_flight"]) == (2, 1, 1)
    pending("cancelled")
    assert console.state()["methods"][0]["in_flight"] == 0
