"""The soak test behind ``python -m callosum_like soak`` (and ``make soak``).

Theory of operation: ``run_soak`` starts one *server* process per transport
(``python -m callosum_like soak-server``) at a port it chose, then drives it from this process
for ``--duration`` seconds:

1. *Flood*: ``--flood`` calls (100,000 by default) at a slow method, ``FLOOD_WINDOW`` at a
   time, against the server's small ``max_pending``: most are refused with
   ``OverloadedError`` (expected, counted apart) and the server's resident memory is
   sampled before, during and after.
2. *Mixed load*: ``--clients`` long-lived clients per transport call in a loop: echoes small
   and large, a call the server answers by calling the client back, a stream, a call whose
   handler raises (an ``RPCUserError`` is the right answer there). One *churn* loop per
   transport opens a short-lived client, makes a round trip both ways and closes it.
3. *Kills*: every ``--kill-interval`` seconds (transports staggered by half of it) the server
   is killed with SIGKILL and restarted at the same port after ``DOWN_TIME``. Clients
   reconnect by themselves.

Every failure is counted by its exception class. ``PeerDisconnectedError`` is acceptable
from the kill until ``GRACE`` seconds after the new server is ready (a caller whose call was
in flight, or who called while the link was down); anything else, or that error outside a
kill window, fails the soak. At the end the report gives the calls made by kind, failures by
kind, the kills, and the resident memory (``VmRSS``) of this process at start and end and of
each server life. The exit status is 0 when the soak passed.

Only ``__main__`` imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from .addresses import AddressLike, TCPAddress
from .demo import TRANSPORTS, ChildProcess, ignore_sigint, wait_for_stdin_eof
from .errors import OverloadedError, PeerDisconnectedError, RPCError, RPCUserError
from .peer import Peer
from .request import Body, Request

__all__ = [
    "DEFAULT_DURATION",
    "add_soak_arguments",
    "add_soak_server_arguments",
    "run_soak",
    "run_soak_server",
    "Tally",
    "Window",
]

#: Seconds a soak runs by default (``make soak``; ``SOAK_DURATION=...`` changes it).
DEFAULT_DURATION: Final = 300.0
#: Seconds between two kills of one server.
DEFAULT_KILL_INTERVAL: Final = 30.0
#: Long-lived clients per transport.
DEFAULT_CLIENTS: Final = 4
#: Calls of the flood phase, per transport.
DEFAULT_FLOOD: Final = 100_000
#: Flood calls in flight at once: well over the server's ``max_pending``.
FLOOD_WINDOW: Final = 2000
#: The server's limits: small, so that the flood is refused rather than held.
SERVER_MAX_CONCURRENCY: Final = 64
SERVER_MAX_PENDING: Final = 1000
#: Seconds a killed server stays down before it is restarted.
DOWN_TIME: Final = 0.5
#: Seconds after a restarted server is ready during which its clients may still report
#: ``PeerDisconnectedError`` (a reconnection waits up to 2 s, then handshakes).
GRACE: Final = 10.0
#: Seconds any one call may take; a slower one is a failure (``RPCTimeoutError``).
CALL_TIMEOUT: Final = 10.0
#: Heartbeat of every peer of the soak: a dead link is noticed within seconds.
HEARTBEAT_INTERVAL: Final = 1.0
HEARTBEAT_TIMEOUT: Final = 4.0
#: Attempts to start a server life, a quarter of a second apart.
RESTART_ATTEMPTS: Final = 20
#: Seconds a kill and restart may take before it counts as a failure.
RESTART_TIMEOUT: Final = 60.0
#: Seconds the load gets to stop at the end.
STOP_TIMEOUT: Final = 30.0
#: Failure kinds a kill may cause.
ALLOWED: Final = frozenset({"PeerDisconnectedError"})
#: What a ZeroMQ client reports when the server dies in the middle of its CURVE handshake:
#: libzmq cannot tell that from a wrong server key ("handshake failed, no detail"), so a
#: connecting peer raises AuthenticationError. During a kill, that is the kill's doing.
HANDSHAKE_CUT: Final = "security handshake failed"
SERVER_IDENTITY: Final = "soak-server"
STREAM_ITEMS: Final = 20
BIG_BODY: Final = 64 * 1024


# --- the server -----------------------------------------------------------------------------


async def _echo(request: Request) -> Body:
    return request.body


async def _slow(request: Request) -> Body:
    await asyncio.sleep(0.005)
    return request.body


async def _fail(request: Request) -> Body:
    raise ValueError("as asked")


async def _count(request: Request) -> Any:
    for item in range(int(request.body)):
        yield item


async def _double(request: Request) -> Body:
    return request.body * 2


def _bind_address(transport: str, port: int) -> AddressLike:
    return TCPAddress("127.0.0.1", port) if transport == "tcp" else f"tcp://127.0.0.1:{port}"


async def serve_soak(transport: str, port: int) -> int:
    """Serve the soak's methods at ``port`` until stdin closes (or the process is killed)."""
    server = Peer(
        bind=_bind_address(transport, port),
        identity=SERVER_IDENTITY,
        max_concurrency=SERVER_MAX_CONCURRENCY,
        max_pending=SERVER_MAX_PENDING,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )

    async def call_back(request: Request) -> Body:
        return await server.invoke("double", request.body, to=request.peer_id, timeout=5)

    async def stats(request: Request) -> Body:
        snapshot = server.statistics()
        return {name: _plain(getattr(snapshot, name)) for name in snapshot.__slots__}

    for name, handler in [("echo", _echo), ("slow", _slow), ("fail", _fail), ("count", _count)]:
        server.handle_function(name, handler)
    server.handle_function("call_back", call_back)
    server.handle_function("stats", stats)
    async with server:
        print(f"READY {server.address}", flush=True)
        await wait_for_stdin_eof()
    return 0


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, collections.abc.Mapping) else value


def run_soak_server(args: argparse.Namespace) -> int:
    """The ``soak-server`` subcommand: one server life."""
    ignore_sigint()
    return asyncio.run(serve_soak(args.transport, args.port))


# --- bookkeeping --------------------------------------------------------------------------


@dataclass
class Window:
    """A time when one server was down, or had come back less than ``GRACE`` ago."""

    start: float
    end: float | None = None  # None: the server is still down

    def covers(self, now: float) -> bool:
        """Whether ``now`` falls in this window."""
        return self.start <= now and (self.end is None or now <= self.end)


@dataclass
class Tally:
    """Calls and failures of the whole soak, and when each server was down."""

    ok: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: int = 0
    windows: dict[str, list[Window]] = field(default_factory=lambda: collections.defaultdict(list))

    def succeeded(self, kind: str, count: int = 1) -> None:
        """Count ``count`` successful operations of ``kind``."""
        self.ok[kind] += count

    def failed(self, transport: str, error: BaseException) -> None:
        """Count a failure; remember it as unexpected unless a kill explains it."""
        kind = type(error).__name__
        self.failures[kind] += 1
        if not (_explained_by_a_kill(error) and self.in_window(transport)):
            self.unexpected[kind] += 1

    def in_window(self, transport: str) -> bool:
        """Whether ``transport``'s server is down or came back less than ``GRACE`` ago."""
        now = time.monotonic()
        return any(window.covers(now) for window in self.windows[transport])

    def killed(self, transport: str) -> None:
        """The server of ``transport`` is being killed now."""
        self.windows[transport].append(Window(time.monotonic()))

    def restarted(self, transport: str) -> None:
        """The new server of ``transport`` is ready: its window closes ``GRACE`` from now."""
        self.windows[transport][-1].end = time.monotonic() + GRACE


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
            server = ChildProcess(f"{self.transport} server", argv)  # its output is relayed
            await server.__aenter__()
            try:
                address = await server.ready()
            except (RuntimeError, TimeoutError) as exc:  # it could not bind (yet), or hung
                print(f"{self.transport} server did not start: {exc!r}; trying again", flush=True)
                await server.__aexit__(None, None, None)
                await asyncio.sleep(0.25)
                continue
            self.server = server
            tcp = self.transport == "tcp"
            self.address = TCPAddress("127.0.0.1", self.port) if tcp else address
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


# --- the whole soak -----------------------------------------------------------------------------


@dataclass
class Options:
    """What ``soak`` was asked to do."""

    duration: float
    transports: tuple[str, ...]
    kill_interval: float
    clients: int
    flood: int
    json_path: str | None = None


async def soak(options: Options) -> dict[str, Any]:
    """Run the soak; return the report (see ``format_report``)."""
    tally = Tally()
    sites = [Site(transport, tally) for transport in options.transports]
    started = time.monotonic()
    for site in sites:
        await site.start_server()
    report: dict[str, Any] = {"options": options.__dict__, "client_rss_start": rss_mb()}
    async with contextlib.AsyncExitStack() as clients:
        floods = await asyncio.gather(*(flood(site, options.flood) for site in sites))
        report["flood"] = dict(zip(options.transports, floods, strict=True))
        report["client_rss_warm"] = rss_mb()  # after the flood's thousands of tasks
        stop = asyncio.Event()
        tasks = await _start_load(sites, options, clients, stop)
        remaining = options.duration - (time.monotonic() - started)
        await asyncio.sleep(max(remaining, 0))
        stop.set()
        await _finish(tasks, tally)
        report["last_calls_ok"] = await _final_check(sites, clients)
    report["client_rss_end"] = rss_mb()
    report["server_rss_end"] = {site.transport: await site.stop_server() for site in sites}
    report["server_rss_lives"] = {site.transport: site.server_rss for site in sites}
    report["kills"] = {site.transport: site.kills for site in sites}
    report["elapsed"] = time.monotonic() - started
    report["ok"] = dict(tally.ok)
    report["failures"] = dict(tally.failures)
    report["unexpected"] = dict(tally.unexpected)
    report["refused"] = tally.refused
    report["passed"] = not tally.unexpected and report["last_calls_ok"]
    return report


async def _start_load(
    sites: list[Site], options: Options, clients: contextlib.AsyncExitStack, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    tasks = []
    for index, site in enumerate(sites):
        for number in range(options.clients):
            client = await clients.enter_async_context(
                site.client(f"soak-{site.transport}-{number}")
            )
            tasks.append(asyncio.create_task(worker(site, client, number, stop)))
        tasks.append(asyncio.create_task(churn(site, stop)))
        offset = options.kill_interval * (1 + index / max(len(sites), 1) / 2)
        tasks.append(asyncio.create_task(killer(site, options.kill_interval, offset, stop)))
    return tasks


async def _finish(tasks: list[asyncio.Task[None]], tally: Tally) -> None:
    """Wait for the load to stop; a task that does not, or that crashed, fails the soak."""
    done, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    for task in stuck:
        tally.unexpected["StuckTask"] += 1
        print(f"still running {STOP_TIMEOUT:.0f} s after the end: {task!r}", flush=True)
        task.cancel()
    await asyncio.gather(*stuck, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            tally.unexpected[f"crashed: {type(task.exception()).__name__}"] += 1
            print(f"a task of the soak crashed: {task.exception()!r}", flush=True)


async def _final_check(sites: list[Site], clients: contextlib.AsyncExitStack) -> bool:
    """After the last restart, every transport still answers, and its statistics say so."""
    for site in sites:
        client = await clients.enter_async_context(site.client(f"check-{site.transport}"))
        stats = await client.invoke("stats", timeout=CALL_TIMEOUT)
        if not isinstance(stats, dict) or stats.get("connected_peers", 0) < 1:
            return False
    return True


def format_report(report: dict[str, Any]) -> str:
    """The report as text, one fact per line."""
    options = report["options"]
    ok = report["ok"]
    lines = [
        f"callosum_like soak: {report['elapsed']:.0f} s, {'+'.join(options['transports'])}, "
        f"{options['clients']} clients per transport, server killed every "
        f"{options['kill_interval']:.0f} s",
    ]
    for transport, memory in report["flood"].items():
        lines.append(
            f"flood ({transport}): server RSS {memory['before']:.1f} MiB before, "
            f"{memory['peak']:.1f} peak, {memory['after']:.1f} after"
        )
    lines.append(
        f"flood calls: {options['flood'] * len(options['transports'])}, of which "
        f"{report['refused']} refused at once with OverloadedError (expected)"
    )
    details = ", ".join(f"{kind} {count}" for kind, count in sorted(ok.items()))
    lines.append(f"calls made: {sum(ok.values())} succeeded ({details})")
    failures = ", ".join(f"{k} {v}" for k, v in sorted(report["failures"].items())) or "none"
    lines.append(f"failures by kind: {failures}")
    unexpected = ", ".join(f"{k} {v}" for k, v in sorted(report["unexpected"].items()))
    lines.append(f"unexpected failures: {unexpected or 'none'}")
    lines.append(f"kills: {', '.join(f'{t} {n}' for t, n in report['kills'].items())}")
    lines.append(
        f"client RSS: {report['client_rss_start']:.1f} MiB at start, "
        f"{report['client_rss_warm']:.1f} after the flood, {report['client_rss_end']:.1f} at end"
    )
    for transport, lives in report["server_rss_lives"].items():
        figures = ", ".join(f"{value:.1f}" for value in lives)
        lines.append(f"server RSS ({transport}) at the end of each life, MiB: {figures}")
    lines.append("result: " + ("PASSED" if report["passed"] else "FAILED"))
    return "\n".join(lines)


def run_soak(args: argparse.Namespace) -> int:
    """The ``soak`` subcommand; the exit status is 0 when the soak passed."""
    transports = TRANSPORTS if args.transport == "both" else (args.transport,)
    options = Options(
        args.duration, tuple(transports), args.kill_interval, args.clients, args.flood, args.json
    )
    print(
        f"soaking for {options.duration:.0f} s ({'+'.join(transports)}): a flood first, "
        f"then mixed load with a line per server kill, and the report at the end",
        flush=True,
    )
    report = asyncio.run(soak(options))
    print(format_report(report), flush=True)
    if options.json_path:
        with open(options.json_path, "w") as out:
            json.dump(report, out, indent=2, default=str)
    return 0 if report["passed"] else 1


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``soak``."""
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds")
    parser.add_argument("--transport", choices=(*TRANSPORTS, "both"), default="both")
    parser.add_argument(
        "--kill-interval", type=float, default=DEFAULT_KILL_INTERVAL, help="seconds between kills"
    )
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="per transport")
    parser.add_argument("--flood", type=int, default=DEFAULT_FLOOD, help="calls per transport")
    parser.add_argument("--json", help="also write the report as JSON to this path")


def add_soak_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the hidden ``soak-server``."""
    parser.add_argument("--transport", choices=TRANSPORTS, required=True)
    parser.add_argument("--port", type=int, required=True)


def _explained_by_a_kill(error: BaseException) -> bool:
    """Whether a server kill can cause ``error`` (see ``ALLOWED`` and ``HANDSHAKE_CUT``)."""
    if type(error).__name__ in ALLOWED:
        return True
    return type(error).__name__ == "AuthenticationError" and HANDSHAKE_CUT in str(error)
