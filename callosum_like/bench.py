"""Benchmarks side by side with peers: ``python -m callosum_like bench``.

Theory of operation: the *parent* (``run_bench``) walks ``repeat x systems x workloads``.
For each step it starts a fresh *server* process and a fresh *client* process on 127.0.0.1;
the server binds port 0, prints ``READY <address>`` and serves until its stdin closes; the
client connects, warms up, measures one workload, prints ``RESULT <json>`` and exits. Fresh
processes per step keep one workload's memory and warm caches out of the next one's figures.

Every system runs the *same* measuring code (``measure``), through a small client adapter
(``EchoClient``: ``echo`` and ``stream``). This project's server and client are the hidden
subcommands ``bench-server`` / ``bench-client``; the peers (callosum 1.0.3, grpc.aio, raw
pyzmq, raw asyncio streams) are scripts in ``bench/peers/`` of a source checkout, which call
``peer_main`` here with their own adapter. A peer whose package is missing, or whose scripts
are absent, is reported as skipped, never as an error.

The client measures: wall time with ``time.perf_counter``; CPU time of both processes from
``/proc/<pid>/stat`` (all threads, so ZeroMQ's I/O thread counts); resident memory from
``/proc/<pid>/status``: the idle ``VmRSS`` after connecting, then the peak ``VmHWM`` after the
workload, with the peak reset in between through ``/proc/<pid>/clear_refs``. Off Linux the
CPU and memory figures are left out. With ``--pin`` every server process runs on one CPU and
every client process on another (the affinity is set in the parent around each spawn, so
every thread a child starts, ZeroMQ's I/O thread included, inherits it): the two no longer
trade places on the cores, nor share one, which steadies the small-call figures. Bodies are
random bytes (incompressible), so snappy compression cannot flatter a system. MB/s counts
10**6 bytes of body per second: an echo's body twice (there and back), a stream's chunks
once.

The rest is reporting: medians and spread over repeats, a terminal table per workload, JSON
(versions, host facts, event loop), a Markdown copy of the tables, the issue's targets with
met / not met, and a PNG chart of ratios to callosum when matplotlib is installed.

Only ``__main__`` imports this module.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self, TextIO, TypeAlias, TypeVar, cast

import zmq

from .demo import bind_address, connect_address, ignore_sigint, wait_for_stdin_eof
from .peer import Peer
from .request import Body, Handler, Request

__all__ = [
    "Workload",
    "System",
    "FULL_WORKLOADS",
    "QUICK_WORKLOADS",
    "SYSTEMS",
    "EchoClient",
    "Payload",
    "ProcessProbe",
    "measure",
    "run_loop",
    "announce",
    "peer_main",
    "add_bench_arguments",
    "add_server_arguments",
    "add_client_arguments",
    "run_bench",
    "run_bench_server",
    "run_bench_client",
    "Progress",
    "Pinning",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Figures of one measured step, by name (see ``docs/performance.md``).
Metrics: TypeAlias = dict[str, float]
#: What an echo returns: a bytes-like object of the body's length.
Payload: TypeAlias = bytes | bytearray | memoryview

MiB: Final = 2**20
#: Seconds a server gets to print ``READY`` (interpreter start, imports, bind).
READY_TIMEOUT: Final = 20.0
#: Seconds one step (client start to its result) may take, for a full run and ``--quick``.
STEP_TIMEOUT: Final = 600.0
QUICK_STEP_TIMEOUT: Final = 60.0
#: Seconds a child gets to exit after being asked, before it is terminated, then killed.
STOP_TIMEOUT: Final = 5.0
#: Seconds any single call of a benchmark may take before the step is declared broken.
CALL_TIMEOUT: Final = 120.0
#: Echo calls every client makes (and checks) right after connecting, before anything else.
CONNECT_WARMUP: Final = 20
#: Lines of a failed child's output kept for the error report.
TAIL_LINES: Final = 8
#: The system the ratios are taken against.
REFERENCE: Final = "callosum"
DEFAULT_OUTPUT: Final = Path("bench/results/latest.json")
#: Where the peers' scripts live in a source checkout.
PEERS_DIR: Final = Path(__file__).resolve().parent.parent / "bench" / "peers"


# --- workloads ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Workload:
    """One measured workload, sent to the client process as JSON.

    Attributes:
        key: Its name in tables and ``--workloads`` (``W1`` ... ``W5``, ``W3-16MiB``).
        kind: ``sequential``, ``concurrent``, ``head_of_line`` or ``stream``.
        title: A one-line description.
        body_size: Bytes in each echoed body (the small body for ``head_of_line``).
        calls: Calls measured.
        warmup: Calls made before measuring (not timed).
        in_flight: Calls kept in flight (``concurrent``).
        big_size: Bytes of the big bodies echoed alongside (``head_of_line``).
        big_calls: Big echoes made (``head_of_line``).
        stream_size: Bytes streamed (``stream``).
        chunk_size: Bytes in each streamed chunk (``stream``).
    """

    key: str
    kind: str
    title: str
    body_size: int = 64
    calls: int = 0
    warmup: int = 0
    in_flight: int = 1
    big_size: int = 0
    big_calls: int = 0
    stream_size: int = 0
    chunk_size: int = MiB

    @property
    def group(self) -> str:
        """``W1`` ... ``W5``: the issue's workload this one belongs to."""
        return self.key.split("-", 1)[0]


def _workloads(scale: int, w1: int, w2: int, stream: int) -> tuple[Workload, ...]:
    """The five workloads; ``scale`` divides the large-body counts for ``--quick``."""
    return (
        Workload(
            key="W1",
            kind="sequential",
            title=f"64-byte echo, 1 in flight, {w1:,} calls",
            calls=w1,
            warmup=w1 // 10,
        ),
        Workload(
            key="W2",
            kind="concurrent",
            title=f"64-byte echo, 64 in flight, {w2:,} calls",
            calls=w2,
            warmup=w2 // 25,
            in_flight=64,
        ),
        Workload(
            key="W3-1MiB",
            kind="sequential",
            title=f"1 MiB echoes, sequential, {200 // scale} calls",
            body_size=MiB,
            calls=200 // scale,
            warmup=2,
        ),
        Workload(
            key="W3-16MiB",
            kind="sequential",
            title=f"16 MiB echoes, sequential, {20 // scale} calls",
            body_size=16 * MiB,
            calls=20 // scale,
            warmup=1,
        ),
        Workload(
            key="W4",
            kind="head_of_line",
            title=f"64-byte calls, 1 in flight, beside {10 // scale} 16 MiB echoes",
            warmup=50,
            big_size=16 * MiB,
            big_calls=10 // scale,
        ),
        Workload(
            key="W5",
            kind="stream",
            title=f"a {_size_text(stream)} stream in 1 MiB chunks",
            warmup=4,
            stream_size=stream,
        ),
    )


def _size_text(size: int) -> str:
    return f"{size // 2**30} GiB" if size >= 2**30 else f"{size // MiB} MiB"


FULL_WORKLOADS: Final = _workloads(1, w1=5_000, w2=50_000, stream=2**30)
QUICK_WORKLOADS: Final = _workloads(10, w1=200, w2=2_000, stream=32 * MiB)


# --- systems --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class System:
    """A system under test: how to start its server and client processes.

    Attributes:
        key: Its name in ``--systems`` and in the JSON.
        label: Its name in tables.
        requires: A module that must be importable, else the system is skipped.
        dists: Distributions whose versions the JSON records.
        script: The peer script in ``bench/peers/``, or ``None`` for this project.
        transport: This project's transport (``zeromq``/``tcp``) when ``script`` is ``None``.
        streams: How W5 runs on it: ``stream`` (native), or the emulation used.
        root: The source tree its children import ``callosum_like`` from, when not this
            one (``--baseline``).
    """

    key: str
    label: str
    requires: str
    dists: tuple[str, ...]
    script: str | None = None
    transport: str = ""
    streams: str = "stream"
    root: str | None = None

    def argv(self, role: str) -> list[str]:
        """The command line of its ``server`` or ``client`` process (without options)."""
        if self.script is None:
            return [
                sys.executable,
                "-m",
                "callosum_like",
                f"bench-{role}",
                "--transport",
                self.transport,
            ]
        return [sys.executable, str(PEERS_DIR / self.script), role]

    def missing(self) -> str | None:
        """Why it cannot run here, or ``None`` when it can."""
        if importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed (pip install -e '.[bench]')"
        if self.root is not None and not (Path(self.root) / "callosum_like").is_dir():
            return f"{self.root} holds no callosum_like package"
        if self.script is not None and not (PEERS_DIR / self.script).is_file():
            return f"{PEERS_DIR / self.script} not found (run from a source checkout)"
        return None


SYSTEMS: Final = (
    System(
        key="like-zeromq",
        label="callosum_like zeromq",
        requires="zmq",
        dists=("callosum-like", "pyzmq"),
        transport="zeromq",
    ),
    System(key="like-tcp", label="callosum_like tcp", requires="zmq", dists=(), transport="tcp"),
    System(
        key="callosum",
        label="callosum 1.0.3",
        requires="callosum",
        dists=("callosum",),
        script="peer_callosum.py",
        streams="emulated: sequential 1 MiB calls",
    ),
    System(key="grpc", label="grpc.aio", requires="grpc", dists=("grpcio",), script="peer_grpc.py"),
    System(
        key="raw-pyzmq",
        label="raw pyzmq",
        requires="zmq",
        dists=("pyzmq",),
        script="peer_pyzmq.py",
        streams="stream (ROUTER_MANDATORY + high-water marks)",
    ),
    System(
        key="raw-asyncio",
        label="raw asyncio TCP",
        requires="asyncio",
        dists=(),
        script="peer_asyncio.py",
    ),
)
#: ``--systems`` groups.
SYSTEM_GROUPS: Final = {
    "all": tuple(s.key for s in SYSTEMS),
    "ours": ("like-zeromq", "like-tcp"),
    "peers": tuple(s.key for s in SYSTEMS[2:]),
}


# --- the client side: adapters, probes, measuring -------------------------------------------------


class EchoClient(Protocol):
    """What a system's client offers the workloads.

    Attributes:
        stream_kind: How ``stream`` works (``stream``, an emulation), or ``""`` for none.
    """

    stream_kind: str

    async def echo(self, body: bytes) -> Payload:
        """Send ``body`` to the server's echo and return what comes back."""
        ...

    def stream(self, size: int, chunk_size: int) -> AsyncIterator[Payload]:
        """Have the server send ``size`` bytes in chunks of ``chunk_size``; yield each."""
        ...


#: Opens a client connected to the address the server printed.
Connect: TypeAlias = Callable[[str], AbstractAsyncContextManager[EchoClient]]


class ProcessProbe:
    """CPU time and resident memory of one process, read from ``/proc`` (Linux only).

    Every reading returns ``None`` where ``/proc`` has no answer.

    Args:
        pid: The process to watch.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._proc = Path(f"/proc/{pid}")

    def cpu_seconds(self) -> float | None:
        """User plus system CPU seconds of all its threads so far."""
        try:
            stat = (self._proc / "stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int | None:
        """Resident set size now, in bytes."""
        return self._status("VmRSS")

    def peak_rss(self) -> int | None:
        """Peak resident set size since the start or the last ``reset_peak``, in bytes."""
        return self._status("VmHWM")

    def reset_peak(self) -> bool:
        """Reset the peak to the current size; False when the kernel refused."""
        try:
            (self._proc / "clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def _status(self, name: str) -> int | None:
        try:
            lines = (self._proc / "status").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        return None


class _Window:
    """The measured part of a step: memory from ``open``, time and CPU from ``start``."""

    def __init__(self, probes: dict[str, ProcessProbe]) -> None:
        self._probes = probes
        self._idle: dict[str, int | None] = {}
        self._cpu: dict[str, float | None] = {}
        self._started = 0.0

    def open(self) -> None:
        for role, probe in self._probes.items():
            self._idle[role] = probe.rss()
            probe.reset_peak()

    def start(self) -> None:
        self._cpu = {role: probe.cpu_seconds() for role, probe in self._probes.items()}
        self._started = time.perf_counter()

    def stop(self, calls: int) -> Metrics:
        """Seconds since ``start``, and CPU microseconds per call of each process."""
        metrics: Metrics = {"seconds": time.perf_counter() - self._started}
        for role, probe in self._probes.items():
            before, after = self._cpu[role], probe.cpu_seconds()
            if before is not None and after is not None:
                metrics[f"{role}_cpu_us_per_call"] = (after - before) / max(calls, 1) * 1e6
        if {"client_cpu_us_per_call", "server_cpu_us_per_call"} <= metrics.keys():
            both = metrics["client_cpu_us_per_call"] + metrics["server_cpu_us_per_call"]
            metrics["cpu_us_per_call"] = both
        return metrics

    def memory(self) -> Metrics:
        """Idle RSS and peak RSS above idle of each process, in MiB."""
        metrics: Metrics = {}
        for role, probe in self._probes.items():
            idle, peak = self._idle.get(role), probe.peak_rss()
            if idle is not None and peak is not None:
                metrics[f"{role}_idle_rss_mib"] = idle / MiB
                metrics[f"{role}_peak_rss_mib"] = max(peak - idle, 0) / MiB
        peaks = [v for k, v in metrics.items() if k.endswith("_peak_rss_mib")]
        if peaks:
            metrics["peak_rss_mib"] = max(peaks)
        return metrics


async def measure(
    client: EchoClient, workload: Workload, probes: dict[str, ProcessProbe]
) -> Metrics:
    """Warm up, then measure ``workload`` through ``client``.

    Args:
        client: A connected client adapter.
        workload: What to measure.
        probes: ``client`` and ``server`` process probes.

    Returns:
        The step's figures.

    Raises:
        RuntimeError: An echo came back different from what was sent.
    """
    await _warm_up(client, os.urandom(64), CONNECT_WARMUP)
    window = _Window(probes)
    window.open()
    figures = await _RUNNERS[workload.kind](client, workload, window)
    return {**figures, **window.memory()}


async def _warm_up(client: EchoClient, body: bytes, calls: int) -> None:
    for _ in range(calls):
        reply = await client.echo(body)
        if bytes(reply) != body:
            raise RuntimeError(f"echo of {len(body)} bytes came back as {len(reply)} other bytes")


async def _sequential(client: EchoClient, workload: Workload, window: _Window) -> Metrics:
    body = os.urandom(workload.body_size)
    await _warm_up(client, body, workload.warmup)
    latencies: list[float] = []
    clock = time.perf_counter
    window.start()
    for _ in range(workload.calls):
        sent = clock()
        await client.echo(body)
        latencies.append(clock() - sent)
    figures = window.stop(workload.calls)
    return {
        **figures,
        **_rates(workload.calls, workload.body_size, figures["seconds"]),
        **_latency(latencies),
    }


async def _concurrent(client: EchoClient, workload: Workload, window: _Window) -> Metrics:
    body = os.urandom(workload.body_size)
    await _in_flight(client, body, workload.warmup, workload.in_flight)
    window.start()
    latencies = await _in_flight(client, body, workload.calls, workload.in_flight)
    figures = window.stop(workload.calls)
    return {
        **figures,
        **_rates(workload.calls, workload.body_size, figures["seconds"]),
        **_latency(latencies),
        "in_flight": workload.in_flight,
    }


async def _in_flight(client: EchoClient, body: bytes, calls: int, width: int) -> list[float]:
    """Make ``calls`` echoes with ``width`` of them in flight; return their latencies."""
    latencies: list[float] = []
    remaining = calls
    clock = time.perf_counter

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            sent = clock()
            await client.echo(body)
            latencies.append(clock() - sent)

    async with asyncio.TaskGroup() as group:
        for _ in range(width):
            group.create_task(caller())
    return latencies


async def _head_of_line(client: EchoClient, workload: Workload, window: _Window) -> Metrics:
    small, big = os.urandom(workload.body_size), os.urandom(workload.big_size)
    await _warm_up(client, small, workload.warmup)
    await _warm_up(client, big, 1)
    done = asyncio.Event()
    latencies: list[float] = []
    clock = time.perf_counter

    async def bigs() -> None:
        for _ in range(workload.big_calls):
            await client.echo(big)
        done.set()

    async def smalls() -> None:
        while not done.is_set():
            sent = clock()
            await client.echo(small)
            latencies.append(clock() - sent)

    window.start()
    async with asyncio.TaskGroup() as group:
        group.create_task(bigs())
        group.create_task(smalls())
    figures = window.stop(len(latencies) + workload.big_calls)
    big_rate = _rates(workload.big_calls, workload.big_size, figures["seconds"])["mb_per_s"]
    return {
        **figures,
        **_latency(latencies),
        "small_calls": len(latencies),
        "big_calls": workload.big_calls,
        "big_mb_per_s": big_rate,
    }


async def _stream(client: EchoClient, workload: Workload, window: _Window) -> Metrics:
    chunk = workload.chunk_size
    await _drain(client, workload.warmup * chunk, chunk)
    window.start()
    received = await _drain(client, workload.stream_size, chunk)
    chunks = workload.stream_size // chunk
    figures = window.stop(chunks)
    if received != workload.stream_size:
        raise RuntimeError(f"stream gave {received} bytes, not {workload.stream_size}")
    return {
        **figures,
        **_rates(chunks, chunk, figures["seconds"], ways=1),
        "stream_bytes": received,
    }


async def _drain(client: EchoClient, size: int, chunk_size: int) -> int:
    received = 0
    async for chunk in client.stream(size, chunk_size):
        received += len(chunk)
    return received


_Runner: TypeAlias = Callable[[EchoClient, Workload, _Window], Awaitable[Metrics]]
_RUNNERS: Final[dict[str, _Runner]] = {
    "sequential": _sequential,
    "concurrent": _concurrent,
    "head_of_line": _head_of_line,
    "stream": _stream,
}


def _rates(calls: int, size: int, seconds: float, ways: int = 2) -> Metrics:
    """Calls/s and MB/s: 10**6 bytes of body per second, counted ``ways`` times per call.

    An echo moves its body twice (request and reply); a stream chunk once.
    """
    return {
        "calls": calls,
        "calls_per_s": calls / seconds,
        "mb_per_s": calls * size * ways / seconds / 1e6,
    }


def _latency(latencies: list[float]) -> Metrics:
    ordered = sorted(latencies)
    return {"p50_us": _percentile(ordered, 50) * 1e6, "p99_us": _percentile(ordered, 99) * 1e6}


def _percentile(ordered: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


# --- child process entry points -------------------------------------------------------------------


def run_loop(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``main`` on uvloop (``uvloop``, or ``auto`` when installed) or asyncio's loop.

    Raises:
        ImportError: ``loop`` is ``uvloop`` and uvloop is not installed.
    """
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop != "asyncio":
        try:
            factory = importlib.import_module("uvloop").new_event_loop
        except ImportError:
            if loop == "uvloop":
                raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


async def announce(address: str) -> None:
    """Tell the parent where the server listens, then serve until our stdin closes."""
    print(f"READY {address}", flush=True)
    await wait_for_stdin_eof()


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark server process."""
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark client process."""
    add_server_arguments(parser)
    parser.add_argument("--connect", required=True, help="the address the server printed")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--workload", required=True, help="a Workload as JSON")


def _serve_main(serve: Coroutine[Any, Any, None], loop: str) -> int:
    ignore_sigint()
    run_loop(serve, loop)
    return 0


def _client_main(connect: Connect, args: argparse.Namespace) -> int:
    workload = Workload(**json.loads(args.workload))
    probes = {"client": ProcessProbe(os.getpid()), "server": ProcessProbe(args.server_pid)}
    report = run_loop(_client_session(connect, args.connect, workload, probes), args.loop)
    print("RESULT " + json.dumps(report), flush=True)
    return 0


async def _client_session(
    connect: Connect, address: str, workload: Workload, probes: dict[str, ProcessProbe]
) -> dict[str, object]:
    async with connect(address) as client:
        report: dict[str, object] = {"loop": _loop_name(), "stream_kind": client.stream_kind}
        if workload.kind == "stream" and not client.stream_kind:
            return {**report, "skipped": "no streams"}
        return {**report, "metrics": await measure(client, workload, probes)}


def peer_main(
    serve: Callable[[], Coroutine[Any, Any, None]],
    connect: Connect,
    argv: Sequence[str] | None = None,
) -> int:
    """The command line of a peer script: ``server [options]`` or ``client [options]``.

    Args:
        serve: Binds 127.0.0.1 port 0, then awaits ``announce(address)``.
        connect: Opens a client adapter connected to an address.
        argv: The arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description="A benchmark server or client process.")
    roles = parser.add_subparsers(dest="role", required=True)
    add_server_arguments(roles.add_parser("server"))
    add_client_arguments(roles.add_parser("client"))
    args = parser.parse_args(argv)
    if args.role == "server":
        return _serve_main(serve(), args.loop)
    return _client_main(connect, args)


# --- this project's server and client -------------------------------------------------------------


def run_bench_server(args: argparse.Namespace) -> int:
    """``bench-server``: serve ``echo`` and the ``stream`` generator over ``args.transport``."""
    return _serve_main(_serve_like(args.transport), args.loop)


def run_bench_client(args: argparse.Namespace) -> int:
    """``bench-client``: measure one workload against a ``bench-server``."""
    transport: str = args.transport

    def connect(address: str) -> AbstractAsyncContextManager[EchoClient]:
        return _connect_like(transport, address)

    return _client_main(connect, args)


async def _serve_like(transport: str) -> None:
    async def echo(request: Request) -> Body:
        return request.body

    async def stream(request: Request) -> AsyncIterator[Body]:
        size, chunk_size = request.body
        chunk = os.urandom(chunk_size)
        for _ in range(size // chunk_size):
            yield chunk

    async with Peer(bind=bind_address(transport), identity="bench-server") as server:
        server.handle_function("echo", echo)
        server.handle_function("stream", cast("Handler", stream))  # Peer's hint omits streams
        await announce(server.address)


class _LikeClient:
    """The ``EchoClient`` of this project."""

    stream_kind = "stream"

    def __init__(self, peer: Peer) -> None:
        self._peer = peer

    async def echo(self, body: bytes) -> Payload:
        reply = await self._peer.invoke("echo", body)
        assert isinstance(reply, bytes)
        return reply

    async def stream(self, size: int, chunk_size: int) -> AsyncIterator[Payload]:
        async for chunk in self._peer.stream("stream", [size, chunk_size]):
            yield chunk


@contextlib.asynccontextmanager
async def _connect_like(transport: str, address: str) -> AsyncIterator[EchoClient]:
    async with Peer(
        connect=connect_address(transport, address),
        identity="bench-client",
        invoke_timeout=CALL_TIMEOUT,
    ) as peer:
        yield _LikeClient(peer)


# --- the parent: child processes and steps --------------------------------------------------------


class _Child:
    """A benchmark child process; its output is read for READY/RESULT and kept for errors."""

    def __init__(
        self, label: str, argv: Sequence[str], root: str | None = None, cpu: int | None = None
    ) -> None:
        self.label = label
        self._argv = list(argv)
        self._root = root
        self._cpu = cpu
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # set on the READY line, or at the end of the output
        self._address: str | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.result: str | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def __aenter__(self) -> Self:
        env = {**os.environ, "PYTHONPATH": _python_path(self._root)}
        with _pinned(self._cpu):  # the fork happens in here: the child starts on its CPU
            self._process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self._stop())

    async def ready(self) -> str:
        """The address from the child's ``READY`` line."""
        async with asyncio.timeout(READY_TIMEOUT):
            await self._ready.wait()
        if self._address is None:
            raise RuntimeError(f"{self.label} exited before it was ready")
        return self._address

    async def finish(self, timeout: float) -> str:
        """Wait for the child to exit; return its ``RESULT`` JSON text."""
        assert self._process is not None
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            await self._process.wait()
            await self._reader
        if self.result is None:
            raise RuntimeError(f"{self.label} exited {self._process.returncode} without a result")
        return self.result

    def tail(self) -> str:
        """The child's last output lines."""
        return " / ".join(line for line in self._tail if line.strip())

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        while line := await self._process.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            if text.startswith("READY ") and self._address is None:
                self._address = text.removeprefix("READY ")
                self._ready.set()
            elif text.startswith("RESULT "):
                self.result = text.removeprefix("RESULT ")
            else:
                self._tail.append(text)
        self._ready.set()

    async def _stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # a server's request to stop
        if not await self._exited():
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            if not await self._exited():
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self._reader

    async def _exited(self) -> bool:
        assert self._process is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await self._process.wait()
        return self._process.returncode is not None


def _python_path(root: str | None = None) -> str:
    """Children find this package (or the one under ``root``) even when it is not installed."""
    root = root or str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


@dataclass(frozen=True, slots=True)
class Pinning:
    """The CPUs that ``--pin`` confines every server and every client process to."""

    server: int
    client: int

    @classmethod
    def choose(cls) -> Pinning:
        """The last CPU this process may run on for servers, the one before it for clients.

        Raises:
            RuntimeError: Fewer than two CPUs are usable, or the platform cannot pin.
        """
        if not hasattr(os, "sched_setaffinity"):
            raise RuntimeError("--pin needs os.sched_setaffinity (Linux)")
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            raise RuntimeError(f"--pin needs two usable CPUs, this process has {usable}")
        return cls(server=usable[-1], client=usable[-2])


@contextlib.contextmanager
def _pinned(cpu: int | None) -> Iterator[None]:
    """Confine this thread to ``cpu`` for the block (processes forked meanwhile inherit it)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Outcome:
    """What one step gave: figures, a reason it was skipped, or an error."""

    metrics: Metrics | None = None
    skipped: str | None = None
    error: str | None = None
    loop: str = ""
    stream_kind: str = ""


async def _run_step(
    system: System, workload: Workload, loop: str, timeout: float, pin: Pinning | None = None
) -> _Outcome:
    """Start a server and a client for one (system, workload) and collect the result."""
    argv = [*system.argv("server"), "--loop", loop]
    cpu = None if pin is None else pin.server
    server = _Child(f"{system.key} {workload.key} server", argv, system.root, cpu)
    try:
        async with server:
            text = await _client_step(system, workload, loop, timeout, server, pin)
    except (OSError, RuntimeError, TimeoutError) as exc:
        detail = f" (server: {server.tail()})" if server.tail() else ""
        return _Outcome(error=f"{type(exc).__name__}: {exc}{detail}"[:500])
    return _parse_result(text)


async def _client_step(
    system: System,
    workload: Workload,
    loop: str,
    timeout: float,
    server: _Child,
    pin: Pinning | None = None,
) -> str:
    address = await server.ready()
    argv = [
        *system.argv("client"),
        "--loop",
        loop,
        "--connect",
        address,
        "--server-pid",
        str(server.pid),
        "--workload",
        json.dumps(dataclasses.asdict(workload)),
    ]
    label = f"{system.key} {workload.key} client"
    cpu = None if pin is None else pin.client
    async with _Child(label, argv, system.root, cpu) as client:
        try:
            return await client.finish(timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}: {client.tail()}") from None


def _parse_result(text: str) -> _Outcome:
    report = json.loads(text)
    loop, kind = str(report.get("loop", "")), str(report.get("stream_kind", ""))
    if "skipped" in report:
        return _Outcome(skipped=str(report["skipped"]), loop=loop, stream_kind=kind)
    metrics = {str(k): float(v) for k, v in report["metrics"].items()}
    return _Outcome(metrics=metrics, loop=loop, stream_kind=kind)


# --- the parent: aggregation ----------------------------------------------------------------------


@dataclass(kw_only=True, slots=True)
class _Summary:
    """All runs of one (system, workload), and their medians and spread."""

    system: str
    workload: str
    status: str = "ok"
    reason: str = ""
    loop: str = ""
    stream_kind: str = ""
    runs: list[Metrics] = field(default_factory=list)
    median: Metrics = field(default_factory=dict)
    low: Metrics = field(default_factory=dict)
    high: Metrics = field(default_factory=dict)

    def spread(self, metric: str) -> float | None:
        """The larger distance from the median to the min or the max, as a fraction."""
        middle = self.median.get(metric)
        if len(self.runs) < 2 or not middle:
            return None
        return max(self.high[metric] - middle, middle - self.low[metric]) / middle


def _summarize(system: str, workload: str, outcomes: Sequence[_Outcome]) -> _Summary:
    runs = [o.metrics for o in outcomes if o.metrics is not None]
    summary = _Summary(system=system, workload=workload, runs=runs)
    if outcomes:
        summary.loop, summary.stream_kind = outcomes[0].loop, outcomes[0].stream_kind
    errors = [o.error for o in outcomes if o.error]
    skipped = [o.skipped for o in outcomes if o.skipped]
    if not runs:
        summary.status = "skipped" if skipped else "error"
        summary.reason = (skipped or errors or ["not run"])[0]
        return summary
    if errors:
        summary.reason = f"{len(errors)} of {len(outcomes)} runs failed: {errors[0]}"
    keys = set.intersection(*(set(run) for run in runs))
    for key in sorted(keys):
        values = [run[key] for run in runs]
        summary.median[key] = statistics.median(values)
        summary.low[key], summary.high[key] = min(values), max(values)
    return summary


# --- the parent: reporting ------------------------------------------------------------------------

#: Table columns per workload group: (header, metric, unit).
_COLUMNS: Final[dict[str, tuple[tuple[str, str, str], ...]]] = {
    "W1": (
        ("calls/s", "calls_per_s", ""),
        ("p50", "p50_us", "us"),
        ("p99", "p99_us", "us"),
        ("CPU/call", "cpu_us_per_call", "us"),
    ),
    "W2": (("calls/s", "calls_per_s", ""), ("p99", "p99_us", "us")),
    "W3": (
        ("MB/s", "mb_per_s", ""),
        ("client RSS+", "client_peak_rss_mib", "MiB"),
        ("server RSS+", "server_peak_rss_mib", "MiB"),
    ),
    "W4": (
        ("small p50", "p50_us", "us"),
        ("small p99", "p99_us", "us"),
        ("small calls", "small_calls", "count"),
        ("big MB/s", "big_mb_per_s", ""),
    ),
    "W5": (
        ("MB/s", "mb_per_s", ""),
        ("client RSS+", "client_peak_rss_mib", "MiB"),
        ("server RSS+", "server_peak_rss_mib", "MiB"),
    ),
}
#: The figure each workload group is compared on, and whether higher is better.
_PRIMARY: Final[dict[str, tuple[str, bool]]] = {
    "W1": ("calls_per_s", True),
    "W2": ("calls_per_s", True),
    "W3": ("mb_per_s", True),
    "W4": ("p99_us", False),
    "W5": ("mb_per_s", True),
}


def _format(value: float, unit: str) -> str:
    if unit == "us":
        return f"{value / 1000:,.1f} ms" if value >= 1000 else f"{value:,.0f} us"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    if unit == "count":
        return f"{value:,.0f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _speedup(summary: _Summary, reference: _Summary | None, group: str) -> float | None:
    """How many times better than the reference on the group's primary figure."""
    metric, higher = _PRIMARY[group]
    ours = summary.median.get(metric)
    theirs = reference.median.get(metric) if reference is not None else None
    if not ours or not theirs:
        return None
    return ours / theirs if higher else theirs / ours


def _table_rows(workload: Workload, summaries: dict[tuple[str, str], _Summary]) -> list[list[str]]:
    """Header and one row per system for one workload's table."""
    columns = _COLUMNS[workload.group]
    rows = [["system", *(c[0] for c in columns), f"x {REFERENCE}"]]
    reference = summaries.get((REFERENCE, workload.key))
    for key in dict.fromkeys(system for system, _ in summaries):  # in the order they ran
        summary = summaries.get((key, workload.key))
        if summary is None:
            continue
        label = _label(key)
        if summary.status != "ok":
            rows.append([label, f"{summary.status}: {summary.reason}"])
            continue
        cells = [_cell(summary, metric, unit) for _, metric, unit in columns]
        ratio = _speedup(summary, reference, workload.group)
        rows.append([label, *cells, "" if ratio is None else f"{ratio:.2f}"])
    return rows


def _label(key: str) -> str:
    """A system's name in tables; ``base-*`` are the ``--baseline`` twins of ours."""
    labels = {s.key: s.label for s in SYSTEMS}
    return labels.get(key) or labels.get(key.replace("base-", "like-"), key).replace(
        "callosum_like", "baseline"
    )


def _cell(summary: _Summary, metric: str, unit: str) -> str:
    value = summary.median.get(metric)
    if value is None:
        return "n/a"
    spread = summary.spread(metric)
    return _format(value, unit) + ("" if spread is None else f" ±{spread:.0%}")


def _render_text(rows: list[list[str]], left: int = 1) -> list[str]:
    """Align ``rows`` in columns: the first ``left`` to the left, numbers to the right.

    A row shorter than the header (a skipped or failed system) is printed as it is.
    """
    width = len(rows[0])
    widths = [max(len(r[i]) for r in rows if len(r) == width) for i in range(width)]
    lines = []
    for row in rows:
        if len(row) != width:
            lines.append("   ".join([row[0].ljust(widths[0]), *row[1:]]))
            continue
        cells = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("   ".join(cells).rstrip())
    return lines


def _render_markdown(rows: list[list[str]], left: int = 1) -> list[str]:
    """``rows`` as a Markdown table; the first ``left`` columns align left, the rest right."""
    width = len(rows[0])
    padded = [row if len(row) == width else [*row, *[""] * (width - len(row))] for row in rows]
    rule = "|" + "---|" * left + "---:|" * (width - left)
    lines = ["| " + " | ".join(padded[0]) + " |", rule]
    lines += [
        "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in padded[1:]
    ]
    return lines


# --- the parent: targets --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class _Target:
    """One row of the issue's targets table: ``metric of system`` against a bound."""

    row: str
    system: str
    workload: str
    metric: str
    at_least: bool
    factor: float
    reference: str | None = None  # the bound is factor x this system's figure; else absolute

    @property
    def goal(self) -> str:
        sign = ">=" if self.at_least else "<="
        if self.reference is None:
            return f"{sign} {_format(self.factor, _unit(self.metric))}"
        return f"{sign} {self.factor:g} x {self.reference}"


def _unit(metric: str) -> str:
    return "us" if metric.endswith("_us") else "MiB" if metric.endswith("_mib") else ""


#: The issue's targets: (row, system, workload, metric, at least?, factor, reference or None).
_TARGET_TABLE: Final = (
    ("W1 calls/s", "like-zeromq", "W1", "calls_per_s", True, 1.5, REFERENCE),
    ("W1 calls/s", "like-tcp", "W1", "calls_per_s", True, 2.5, REFERENCE),
    ("W2 calls/s", "like-zeromq", "W2", "calls_per_s", True, 3.0, REFERENCE),
    ("W2 calls/s", "like-tcp", "W2", "calls_per_s", True, 5.0, REFERENCE),
    ("W3 16 MiB MB/s", "like-zeromq", "W3-16MiB", "mb_per_s", True, 4.0, REFERENCE),
    ("W3 16 MiB MB/s", "like-zeromq", "W3-16MiB", "mb_per_s", True, 0.7, "raw-pyzmq"),
    ("W3 16 MiB MB/s", "like-tcp", "W3-16MiB", "mb_per_s", True, 0.8, "raw-asyncio"),
    ("W3 16 MiB peak RSS+ per process", "like-zeromq", "W3-16MiB", "peak_rss_mib", False, 48, None),
    ("W3 16 MiB peak RSS+ per process", "like-tcp", "W3-16MiB", "peak_rss_mib", False, 48, None),
    ("W4 small-call p99", "like-zeromq", "W4", "p99_us", False, 5000, None),
    ("W4 small-call p99", "like-tcp", "W4", "p99_us", False, 5000, None),
    ("W5 stream RSS+ per process", "like-zeromq", "W5", "peak_rss_mib", False, 64, None),
    ("W5 stream RSS+ per process", "like-tcp", "W5", "peak_rss_mib", False, 64, None),
)
_TARGETS: Final = tuple(
    _Target(row=r, system=s, workload=w, metric=m, at_least=a, factor=f, reference=ref)
    for r, s, w, m, a, f, ref in _TARGET_TABLE
)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Judged:
    """A target's verdict: ``met`` is None when a figure is missing."""

    target: str
    system: str
    goal: str
    metric: str
    value: float | None = None
    bound: float | None = None
    met: bool | None = None


def _judge(target: _Target, summaries: dict[tuple[str, str], _Summary]) -> _Judged:
    judged = _Judged(
        target=target.row, system=target.system, goal=target.goal, metric=target.metric
    )
    value = _median(summaries, target.system, target.workload, target.metric)
    bound: float | None = target.factor
    if target.reference is not None:
        figure = _median(summaries, target.reference, target.workload, target.metric)
        bound = None if figure is None else figure * target.factor
    if value is None or bound is None:
        return judged
    met = value >= bound if target.at_least else value <= bound
    return dataclasses.replace(judged, value=round(value, 1), bound=round(bound, 1), met=met)


def _median(
    summaries: dict[tuple[str, str], _Summary], system: str, workload: str, metric: str
) -> float | None:
    summary = summaries.get((system, workload))
    return None if summary is None else summary.median.get(metric)


def _target_rows(judged: Sequence[_Judged]) -> list[list[str]]:
    rows = [["target", "system", "goal", "measured", "bound", "verdict"]]
    for j in judged:
        unit = _unit(j.metric)
        verdict = "n/a" if j.met is None else "met" if j.met else "NOT met"
        rows.append(
            [
                j.target,
                j.system,
                j.goal,
                "" if j.value is None else _format(j.value, unit),
                "" if j.bound is None else _format(j.bound, unit),
                verdict,
            ]
        )
    return rows


# --- the parent: chart ----------------------------------------------------------------------------


def _write_chart(
    workloads: Sequence[Workload], summaries: dict[tuple[str, str], _Summary], path: Path
) -> str:
    """Draw the ratios to the reference as grouped bars; return what happened, for the log."""
    if not any(s.status == "ok" for (key, _), s in summaries.items() if key == REFERENCE):
        return f"chart skipped: no {REFERENCE} figures to take ratios to"
    try:
        importlib.import_module("matplotlib").use("Agg")
        pyplot = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    ratios = {
        system.label: [_ratio(summaries, system.key, w) for w in workloads]
        for system in SYSTEMS
        if system.key != REFERENCE and any((system.key, w.key) in summaries for w in workloads)
    }
    figure = _draw_ratios(pyplot, [_chart_label(w) for w in workloads], ratios)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return f"wrote {path}"


def _ratio(
    summaries: dict[tuple[str, str], _Summary], system: str, workload: Workload
) -> float | None:
    summary = summaries.get((system, workload.key))
    if summary is None:
        return None
    return _speedup(summary, summaries.get((REFERENCE, workload.key)), workload.group)


def _draw_ratios(pyplot: Any, labels: list[str], ratios: dict[str, list[float | None]]) -> Any:
    """Grouped bars, one group per workload and one bar per system, on a log axis."""
    figure, axes = pyplot.subplots(figsize=(11, 6))
    step = 0.8 / max(len(ratios), 1)
    for index, (name, values) in enumerate(ratios.items()):
        xs = [i + (index - (len(ratios) - 1) / 2) * step for i in range(len(labels))]
        bars = axes.bar(xs, [v or 0 for v in values], step, label=name)
        axes.bar_label(bars, labels=[f"{v:.1f}" if v else "" for v in values], fontsize=7)
    axes.axhline(1.0, color="black", linewidth=1)
    _log_axis(axes, [v for values in ratios.values() for v in values if v])
    axes.set_xticks(range(len(labels)), labels)
    axes.set_ylabel(f"times better than {REFERENCE} (log scale)")
    axes.set_title(f"Ratio to {REFERENCE} 1.0.3 (higher is better; W4 compares small-call p99)")
    axes.legend(
        fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=len(ratios)
    )
    figure.tight_layout()
    return figure


def _log_axis(axes: Any, values: list[float]) -> None:
    ticker = importlib.import_module("matplotlib.ticker")
    axes.set_yscale("log")
    low, high = min(values, default=1.0), max(values, default=1.0)
    ticks = [2.0**n for n in range(-4, 8) if low / 2 <= 2.0**n <= high * 2]
    axes.set_yticks(ticks)
    axes.yaxis.set_major_formatter(ticker.FormatStrFormatter("%gx"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())


def _chart_label(workload: Workload) -> str:
    metric, _ = _PRIMARY[workload.group]
    names = {"calls_per_s": "calls/s", "mb_per_s": "MB/s", "p99_us": "small-call p99"}
    return f"{workload.key}\n{names[metric]}"


# --- the parent: progress -------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per step otherwise.

    Args:
        total: Steps in the run.
        stream: Where to draw (default ``sys.stderr``).
        enabled: False draws nothing.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._total = max(total, 1)
        self._stream = stream or sys.stderr
        self._enabled = enabled
        self._done = 0
        self._started = time.monotonic()
        self._tty = self._stream.isatty()

    def step(self, label: str) -> None:
        """Show that the next step, ``label``, is starting."""
        if not self._enabled:
            return
        elapsed = time.monotonic() - self._started
        eta = (
            f", ~{elapsed / self._done * (self._total - self._done):.0f} s left"
            if self._done
            else ""
        )
        filled = 30 * self._done // self._total
        text = f"[{'#' * filled}{'.' * (30 - filled)}] {self._done + 1}/{self._total} {label}{eta}"
        self._stream.write(f"\r{text}\x1b[K" if self._tty else f"bench {text}\n")
        self._stream.flush()
        self._done += 1

    def close(self) -> None:
        """Finish the bar."""
        if self._enabled and self._tty:
            self._stream.write(
                f"\r\x1b[Kbench: {self._total} steps in {time.monotonic() - self._started:.0f} s\n"
            )
            self._stream.flush()


# --- the parent: the command ----------------------------------------------------------------------


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m callosum_like bench``."""
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny counts")
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=1,
        metavar="N",
        help="run every step N times; report medians and spread",
    )
    groups = ", ".join(SYSTEM_GROUPS)
    parser.add_argument(
        "--systems",
        action="append",
        metavar="LIST",
        help=f"comma-separated systems or groups ({groups}); default all: "
        + ", ".join(s.key for s in SYSTEMS),
    )
    parser.add_argument(
        "--workloads",
        action="append",
        metavar="LIST",
        help="comma-separated workloads (W1..W5, or W3-1MiB, W3-16MiB)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the children's event loop (auto: uvloop when installed)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"the JSON results; .md and .png beside it (default {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds one step may take before it counts as failed",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run this project's systems from the source tree DIR (e.g. a 'git archive' "
        "of main), interleaved with ours, as base-zeromq and base-tcp",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run every server on one CPU and every client on another (steadier small-call "
        "figures on a busy or small host; needs two usable CPUs)",
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _pick(
    choices: list[str] | None, known: Sequence[str], groups: dict[str, tuple[str, ...]]
) -> list[str]:
    """Expand comma-separated names and groups, keeping ``known``'s order.

    Raises:
        ValueError: A name that is neither known nor a group.
    """
    if not choices:
        return list(known)
    wanted: set[str] = set()
    for name in (n.strip() for c in choices for n in c.split(",") if n.strip()):
        matches = groups.get(name) or [k for k in known if k == name or k.split("-")[0] == name]
        if not matches:
            raise ValueError(f"unknown name {name!r}; choose from {', '.join([*groups, *known])}")
        wanted.update(matches)
    return [k for k in known if k in wanted]


def run_bench(args: argparse.Namespace) -> int:
    """``python -m callosum_like bench``: run, print the tables, write JSON, Markdown, chart.

    Returns:
        0 when every step that ran gave figures, 1 when any failed, 2 on bad options.
    """
    catalogue = QUICK_WORKLOADS if args.quick else FULL_WORKLOADS
    try:
        keys = _pick(args.systems, [s.key for s in SYSTEMS], SYSTEM_GROUPS)
        workload_keys = _pick(args.workloads, [w.key for w in catalogue], {})
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    try:
        pin = Pinning.choose() if args.pin else None
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    systems = _with_baseline([s for s in SYSTEMS if s.key in keys], args.baseline)
    workloads = [w for w in catalogue if w.key in workload_keys]
    loop = _resolve_loop(args.loop)
    pinned = "" if pin is None else f", servers on CPU {pin.server}, clients on CPU {pin.client}"
    print(
        f"callosum_like bench ({'quick, ' if args.quick else ''}{args.repeat} run(s) per "
        f"step, children on {loop}{pinned}): each step is a fresh server and client process "
        "on 127.0.0.1"
    )
    host_before = _host_load()  # other load on the host shows up as spread
    summaries = asyncio.run(_run_all(systems, workloads, args, loop, pin))
    return _report(systems, workloads, summaries, args, loop, host_before, pin)


def _with_baseline(systems: list[System], root: str | None) -> list[System]:
    """Each of this project's systems followed by its twin from the tree ``root``, if given."""
    if root is None:
        return systems
    tree = str(Path(root).resolve())
    out: list[System] = []
    for system in systems:
        out.append(system)
        if system.script is None:
            key = system.key.replace("like-", "base-")
            label = system.label.replace("callosum_like", "baseline")
            out.append(dataclasses.replace(system, key=key, label=label, dists=(), root=tree))
    return out


def _resolve_loop(loop: str) -> str:
    if loop == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    return str(loop)


async def _run_all(
    systems: Sequence[System],
    workloads: Sequence[Workload],
    args: argparse.Namespace,
    loop: str,
    pin: Pinning | None = None,
) -> dict[tuple[str, str], _Summary]:
    timeout = args.timeout or (QUICK_STEP_TIMEOUT if args.quick else STEP_TIMEOUT)
    missing = {s.key: reason for s in systems if (reason := s.missing()) is not None}
    runnable = [s for s in systems if s.key not in missing]
    outcomes: dict[tuple[str, str], list[_Outcome]] = {
        (s.key, w.key): [_Outcome(skipped=missing[s.key])] if s.key in missing else []
        for s in systems
        for w in workloads
    }
    progress = Progress(args.repeat * len(runnable) * len(workloads), enabled=not args.no_progress)
    for run in range(args.repeat):
        for system in runnable:
            for workload in workloads:
                progress.step(f"{system.key} {workload.key} (run {run + 1}/{args.repeat})")
                outcome = await _run_step(system, workload, loop, timeout, pin)
                outcomes[(system.key, workload.key)].append(outcome)
    progress.close()
    return {key: _summarize(*key, runs) for key, runs in outcomes.items()}


def _report(
    systems: Sequence[System],
    workloads: Sequence[Workload],
    summaries: dict[tuple[str, str], _Summary],
    args: argparse.Namespace,
    loop: str,
    host_before: _HostLoad,
    pin: Pinning | None = None,
) -> int:
    text, markdown = _tables(workloads, summaries)
    judged = [_judge(t, summaries) for t in _TARGETS if (t.system, t.workload) in summaries]
    if judged:
        text += ["", "targets (issue 7)", *_render_text(_target_rows(judged), left=3)]
        markdown += ["", "#### Targets", "", *_render_markdown(_target_rows(judged), left=3)]
    print("\n".join(["", *text, ""]))
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    chart = output.with_suffix(".png")
    chart_note = (
        "chart skipped (--no-chart)" if args.no_chart else _write_chart(workloads, summaries, chart)
    )
    report = _json_report(systems, workloads, summaries, judged, args, loop, host_before, pin)
    report["chart"] = str(chart) if chart_note.startswith("wrote") else None
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    output.with_suffix(".md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    print(f"wrote {output} and {output.with_suffix('.md')}; {chart_note}")
    failed = [
        s for s in summaries.values() if s.status == "error" or (s.status == "ok" and s.reason)
    ]
    return 1 if failed else 0


def _tables(
    workloads: Sequence[Workload], summaries: dict[tuple[str, str], _Summary]
) -> tuple[list[str], list[str]]:
    text: list[str] = []
    markdown: list[str] = []
    for workload in workloads:
        rows = _table_rows(workload, summaries)
        text += ["", f"{workload.key}: {workload.title}", *_render_text(rows)]
        markdown += ["", f"#### {workload.key}: {workload.title}", "", *_render_markdown(rows)]
    return text, markdown


def _json_report(
    systems: Sequence[System],
    workloads: Sequence[Workload],
    summaries: dict[tuple[str, str], _Summary],
    judged: Sequence[_Judged],
    args: argparse.Namespace,
    loop: str,
    host_before: _HostLoad,
    pin: Pinning | None = None,
) -> dict[str, object]:
    return {
        "benchmark": "callosum_like bench (issue 7)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "repeat": args.repeat,
        "loop": loop,
        "pinned": None if pin is None else dataclasses.asdict(pin),
        "reference": REFERENCE,
        "versions": _versions(systems),
        "host": {**_host(), **host_before.until_now()},
        "systems": [
            {"key": s.key, "label": s.label, "streams": s.streams, "skipped": s.missing()}
            for s in systems
        ],
        "workloads": [dataclasses.asdict(w) for w in workloads],
        "results": [dataclasses.asdict(s) for s in summaries.values()],
        "targets": [dataclasses.asdict(j) for j in judged],
    }


def _versions(systems: Sequence[System]) -> dict[str, str]:
    versions = {"python": platform.python_version(), "libzmq": zmq.zmq_version()}
    dists = ["callosum-like", "pyzmq", "msgpack", "aiojobs", "cramjam", "uvloop", "matplotlib"]
    for dist in [*dists, *(d for s in systems for d in s.dists)]:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


@dataclass(frozen=True, slots=True)
class _HostLoad:
    """The host's load average and CPU time counters at one moment (Linux ``/proc/stat``)."""

    load_average: list[float] | None
    cpu_ticks: list[int] | None

    def until_now(self) -> dict[str, object]:
        """Load averages then and now, and the share of CPU time stolen by the hypervisor."""
        now = _host_load()
        steal = None
        if self.cpu_ticks is not None and now.cpu_ticks is not None:
            spent = [b - a for a, b in zip(self.cpu_ticks, now.cpu_ticks, strict=True)]
            steal = round(100 * spent[7] / max(sum(spent), 1), 1)  # the 8th field: steal
        return {
            "load_average_before": self.load_average,
            "load_average_after": now.load_average,
            "cpu_steal_percent": steal,
        }


def _host_load() -> _HostLoad:
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    try:
        ticks: list[int] | None = [int(x) for x in Path("/proc/stat").read_text().split()[1:9]]
    except (OSError, ValueError):
        ticks = None
    return _HostLoad(load, ticks)


def _host() -> dict[str, object]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**30
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "machine": platform.machine(),
    }
