"""The soak's load: one transport's server (killed and restarted) and its clients' calls.

Theory of operation: a ``Site`` owns one transport's server process, through its lives (it is
started with ``supervisor.ChildProcess``, killed with SIGKILL and started again at the same
port after ``DOWN_TIME``), and makes clients for it. The load on a site: ``worker``s (long-lived
clients calling a weighted mix of ``OPERATIONS`` in a loop), one ``churn`` loop (short-lived
clients), one ``flood`` before all that, and one ``killer``. Every outcome is counted in the
``tally.Tally``; an answer other than the handler's is a ``WrongResultError``.

Only the soak's modules import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from ...addresses import AddressLike
from ...errors import OverloadedError, PeerDisconnectedError, RPCError, RPCUserError
from ...peer import Peer
from ...request import Body, Request
from ..child import connect_address
from ..supervisor import ChildProcess, subcommand
from .server import HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, SERVER_IDENTITY
from .tally import GRACE, Tally

__all__ = [
    "CALL_TIMEOUT",
    "Site",
    "OPERATIONS",
    "WrongResultError",
    "worker",
    "churn",
    "flood",
    "killer",
    "rss_mb",
    "free_port",
]

#: Flood calls in flight at once: well over the server's ``max_pending``.
FLOOD_WINDOW: Final = 2000
#: Seconds a killed server stays down before it is restarted.
DOWN_TIME: Final = 0.5
#: Seconds any one call may take; a slower one is a failure (``RPCTimeoutError``).
CALL_TIMEOUT: Final = 10.0
#: Attempts to start a server life, a quarter of a second apart.
RESTART_ATTEMPTS: Final = 20
#: Seconds a kill and restart may take before it counts as a failure.
RESTART_TIMEOUT: Final = 60.0
STREAM_ITEMS: Final = 20
BIG_BODY: Final = 64 * 1024


async def _double(request: Request) -> Body:
    return request.body * 2


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process in MiB (0 when unknown, as off Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    """A port that was free a moment ago: the server's, for all its lives."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- one transport's server and clients ----------------------------------------------------------


class Site:
    """One transport: its server process (killed and restarted), and its clients."""

    def __init__(self, transport: str, tally: Tally) -> None:
        self.transport = transport
        self.tally = tally
        self.port = free_port()
        self.server: ChildProcess | None = None
        self.server_rss: list[float] = []  # at the end of each life
        self.kills = 0
        self.address: AddressLike = ""

    async def start_server(self) -> None:
        """Start a server life; retried while the killed one's port is released.

        Raises:
            RuntimeError: No server could be started at the port (the soak fails).
        """
        argv = ["soak-server", "--transport", self.transport, "--port", str(self.port)]
        for _attempt in range(RESTART_ATTEMPTS):
            # Its output is relayed.
            server = ChildProcess(f"{self.transport} server", subcommand(*argv))
            await server.__aenter__()
            try:
                address = await server.ready()
            except (RuntimeError, TimeoutError) as exc:  # it could not bind (yet), or hung
                print(f"{self.transport} server did not start: {exc!r}; trying again", flush=True)
                await server.__aexit__(None, None, None)
                await asyncio.sleep(0.25)
                continue
            self.server = server
            self.address = connect_address(self.transport, address)
            return
        raise RuntimeError(f"the {self.transport} server did not start")

    async def kill_server(self) -> None:
        """SIGKILL the server, wait ``DOWN_TIME``, and start a new one at the same port."""
        assert self.server is not None
        self.tally.killed(self.transport)
        memory = rss_mb(self.server.pid)
        self.server_rss.append(memory)
        os.kill(self.server.pid, signal.SIGKILL)
        await self.server.__aexit__(None, None, None)
        self.kills += 1
        await asyncio.sleep(DOWN_TIME)
        await self.start_server()
        self.tally.restarted(self.transport)
        print(
            f"{time.strftime('%H:%M:%S')} killed the {self.transport} server "
            f"(RSS {memory:.1f} MiB) and restarted it; "
            f"{sum(self.tally.ok.values())} calls so far, failures {dict(self.tally.failures)}, "
            f"this process: RSS {rss_mb():.1f} MiB, {len(asyncio.all_tasks())} tasks",
            flush=True,
        )

    async def stop_server(self) -> float:
        """Stop the last server life cleanly; return its resident memory at the end."""
        assert self.server is not None
        memory = rss_mb(self.server.pid)
        self.server_rss.append(memory)
        await self.server.__aexit__(None, None, None)
        return memory

    def client(self, identity: str, connect_timeout: float = 5.0) -> Peer:
        """A client of this site's server, serving ``double`` for the server's call backs."""
        peer = Peer(
            connect=self.address,
            identity=identity,
            heartbeat_interval=HEARTBEAT_INTERVAL,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            connect_timeout=connect_timeout,
        )
        peer.handle_function("double", _double)
        return peer

    async def server_memory(self) -> float:
        """Resident memory of the current server life, in MiB."""
        return rss_mb(self.server.pid) if self.server is not None else 0.0


# --- the load ------------------------------------------------------------------------------------


async def _op_echo(client: Peer, rng: random.Random) -> None:
    body = rng.randbytes(rng.randrange(256))
    _expect(await client.invoke("echo", body, timeout=CALL_TIMEOUT), body)


async def _op_big(client: Peer, rng: random.Random) -> None:
    body = rng.randbytes(BIG_BODY)
    _expect(await client.invoke("echo", body, timeout=CALL_TIMEOUT), body)


async def _op_call_back(client: Peer, rng: random.Random) -> None:
    number = rng.randrange(1 << 30)
    _expect(await client.invoke("call_back", number, timeout=CALL_TIMEOUT), number * 2)


async def _op_stream(client: Peer, rng: random.Random) -> None:
    items = [item async for item in client.stream("count", STREAM_ITEMS, timeout=CALL_TIMEOUT)]
    _expect(items, list(range(STREAM_ITEMS)))


async def _op_error(client: Peer, rng: random.Random) -> None:
    try:
        await client.invoke("fail", timeout=CALL_TIMEOUT)
    except RPCUserError as exc:
        _expect(exc.name, "ValueError")
        return
    raise WrongResultError("the handler's ValueError did not arrive")


Operation = Callable[[Peer, random.Random], Coroutine[Any, Any, None]]
#: The mixed load, with weights.
OPERATIONS: Final[dict[str, tuple[Operation, int]]] = {
    "echo": (_op_echo, 10),
    "big": (_op_big, 2),
    "call_back": (_op_call_back, 4),
    "stream": (_op_stream, 2),
    "error": (_op_error, 1),
}


class WrongResultError(Exception):
    """A call returned something other than what its handler must have returned."""


def _expect(got: Any, wanted: Any) -> None:
    if got != wanted:
        raise WrongResultError(f"expected {wanted!r:.60}, got {got!r:.60}")


async def _guarded(site: Site, kind: str, call: Awaitable[None]) -> bool:
    """Run one operation; count its outcome. Return False when the link is down."""
    try:
        await call
    except (RPCError, TimeoutError, WrongResultError) as exc:
        site.tally.failed(site.transport, exc)
        return not isinstance(exc, PeerDisconnectedError)
    site.tally.succeeded(kind)
    return True


async def worker(site: Site, client: Peer, seed: int, stop: asyncio.Event) -> None:
    """One long-lived client calling in a loop until ``stop`` is set."""
    rng = random.Random(seed)
    names = list(OPERATIONS)
    weights = [weight for _, weight in OPERATIONS.values()]
    while not stop.is_set():
        kind = rng.choices(names, weights)[0]
        if not await _guarded(site, kind, OPERATIONS[kind][0](client, rng)):
            with contextlib.suppress(TimeoutError):  # back once it has reconnected
                await client.wait_for_peer(SERVER_IDENTITY, timeout=2 * GRACE)


async def churn(site: Site, stop: asyncio.Event) -> None:
    """Short-lived clients, one after another: connect, round trip both ways, close."""
    cycle = 0
    while not stop.is_set():
        cycle += 1

        async def one_life(cycle: int = cycle) -> None:
            identity = f"churn-{site.transport}-{cycle}"
            async with site.client(identity, connect_timeout=2 * GRACE) as client:
                _expect(await client.invoke("call_back", cycle, timeout=CALL_TIMEOUT), cycle * 2)

        if not await _guarded(site, "churn", one_life()):
            await asyncio.sleep(0.1)  # the server is down: do not spin


async def flood(site: Site, count: int) -> dict[str, float]:
    """``count`` slow calls, ``FLOOD_WINDOW`` at once; return the server's memory figures."""
    before = await site.server_memory()
    peak = before
    window = asyncio.Semaphore(FLOOD_WINDOW)
    async with site.client(f"flood-{site.transport}") as client:

        async def one(number: int) -> None:
            try:
                await client.invoke("slow", number, timeout=CALL_TIMEOUT)
                site.tally.succeeded("flood")
            except OverloadedError:
                site.tally.refused += 1
            except (RPCError, TimeoutError) as exc:
                site.tally.failed(site.transport, exc)
            finally:
                window.release()

        tasks: set[asyncio.Task[None]] = set()
        for number in range(count):
            await window.acquire()
            task = asyncio.create_task(one(number))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if number % 1000 == 0:
                peak = max(peak, await site.server_memory())
        await asyncio.gather(*tasks)
    after = await site.server_memory()
    return {"before": before, "peak": max(peak, after), "after": after}


async def killer(site: Site, interval: float, offset: float, stop: asyncio.Event) -> None:
    """Kill and restart ``site``'s server every ``interval`` seconds, from ``offset`` on."""
    delay = offset
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
                return
        try:
            async with asyncio.timeout(RESTART_TIMEOUT):
                await site.kill_server()
        except (RuntimeError, TimeoutError, OSError) as exc:  # fails the soak; keep going
            site.tally.unexpected["ServerRestartError"] += 1
            print(f"could not kill and restart the {site.transport} server: {exc!r}", flush=True)
            if site.server is None or site.server.returncode is not None:
                await site.start_server()
        delay = interval
