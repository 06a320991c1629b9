"""The client side of a step: the adapter every system offers, the probes, and the measuring.

Theory of operation: every system runs the *same* measuring code (``measure``) through a
small client adapter (``EchoClient``: ``echo`` and ``stream``), so a difference in the figures
is a difference in the systems. Wall time is ``time.perf_counter``; CPU time of both processes
comes from ``/proc/<pid>/stat`` (all threads, so ZeroMQ's I/O thread counts); resident memory
from ``/proc/<pid>/status``: the idle ``VmRSS`` after connecting, then the peak ``VmHWM`` after
the workload, with the peak reset in between through ``/proc/<pid>/clear_refs``
(``ProcessProbe``). The client's bodies are allocated inside that window, so its peak above
idle includes what it sends; ``client_peak_beyond_bodies_mib`` is its peak above the point
where it holds them (the replies and what the library adds). Off Linux the CPU and memory
figures are left out. Bodies are random bytes (incompressible), so compression cannot flatter
a system. MB/s counts 10**6 bytes of body per second: an echo's body twice (there and back), a
stream's chunks once.

Only the benchmark's modules (and the peer scripts, for ``Payload``) import this module.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final, Protocol, TypeAlias

from .workloads import MiB, Workload

__all__ = [
    "Metrics",
    "Payload",
    "EchoClient",
    "ProcessProbe",
    "Window",
    "measure",
    "latency_figures",
]

#: Figures of one measured step, by name (see ``docs/performance.md``).
Metrics: TypeAlias = dict[str, float]
#: What an echo returns: a bytes-like object of the body's length.
Payload: TypeAlias = bytes | bytearray | memoryview
#: Echo calls every client makes (and checks) right after connecting, before anything else.
CONNECT_WARMUP: Final = 20


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


class Window:
    """The measured part of a step: memory from ``open``, time and CPU from ``start``."""

    def __init__(self, probes: dict[str, ProcessProbe]) -> None:
        self._probes = probes
        self._idle: dict[str, int | None] = {}
        self._holding: int | None = None  # the client's RSS once it holds its bodies
        self._cpu: dict[str, float | None] = {}
        self._started = 0.0

    def open(self) -> None:
        """Note each process's idle memory and reset its peak: the window opens."""
        for role, probe in self._probes.items():
            self._idle[role] = probe.rss()
            probe.reset_peak()

    def holding(self) -> None:
        """Note the client's RSS once it holds the bodies it will send.

        The bodies are the application's, allocated inside the window; ``memory`` then also
        reports the client's peak above this point: the replies and what the library added.
        """
        probe = self._probes.get("client")
        self._holding = None if probe is None else probe.rss()

    def start(self) -> None:
        """Start the clock and note each process's CPU time: the timed part begins."""
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
        client_peak = self._probes["client"].peak_rss() if "client" in self._probes else None
        if self._holding is not None and client_peak is not None:
            metrics["client_peak_beyond_bodies_mib"] = max(client_peak - self._holding, 0) / MiB
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
    window = Window(probes)
    window.open()
    figures = await _RUNNERS[workload.kind](client, workload, window)
    return {**figures, **window.memory()}


async def _warm_up(client: EchoClient, body: bytes, calls: int) -> None:
    for _ in range(calls):
        reply = await client.echo(body)
        if bytes(reply) != body:
            raise RuntimeError(f"echo of {len(body)} bytes came back as {len(reply)} other bytes")


async def _sequential(client: EchoClient, workload: Workload, window: Window) -> Metrics:
    body = os.urandom(workload.body_size)
    window.holding()
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
        **latency_figures(latencies),
    }


async def _concurrent(client: EchoClient, workload: Workload, window: Window) -> Metrics:
    body = os.urandom(workload.body_size)
    window.holding()
    await _in_flight(client, body, workload.warmup, workload.in_flight)
    window.start()
    latencies = await _in_flight(client, body, workload.calls, workload.in_flight)
    figures = window.stop(workload.calls)
    return {
        **figures,
        **_rates(workload.calls, workload.body_size, figures["seconds"]),
        **latency_figures(latencies),
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


async def _head_of_line(client: EchoClient, workload: Workload, window: Window) -> Metrics:
    small, big = os.urandom(workload.body_size), os.urandom(workload.big_size)
    window.holding()
    await _warm_up(client, small, workload.warmup)
    await _warm_up(client, big, 1)
    done = asyncio.Event()
    latencies: list[float] = []
    clock = time.perf_counter

    big_calls = 0

    async def bigs() -> None:
        nonlocal big_calls
        until = clock() + workload.big_seconds
        while big_calls < workload.big_calls or clock() < until:
            await client.echo(big)
            big_calls += 1
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
    figures = window.stop(len(latencies) + big_calls)
    big_rate = _rates(big_calls, workload.big_size, figures["seconds"])["mb_per_s"]
    return {
        **figures,
        **latency_figures(latencies),
        "small_calls": len(latencies),
        "big_calls": big_calls,
        "big_mb_per_s": big_rate,
    }


async def _stream(client: EchoClient, workload: Workload, window: Window) -> Metrics:
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


_Runner: TypeAlias = Callable[[EchoClient, Workload, Window], Awaitable[Metrics]]
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


def latency_figures(latencies: list[float]) -> Metrics:
    """``p50_us`` and ``p99_us`` of ``latencies`` (seconds), nearest-rank."""
    ordered = sorted(latencies)
    return {"p50_us": _percentile(ordered, 50) * 1e6, "p99_us": _percentile(ordered, 99) * 1e6}


def _percentile(ordered: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]
