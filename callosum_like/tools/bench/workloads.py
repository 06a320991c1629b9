"""The benchmark's workloads, W1 to W5, in a full and a ``--quick`` size.

Theory of operation: a ``Workload`` is a frozen value the parent sends to each client process
as JSON (``dataclasses.asdict``), and the client's ``measure.measure`` runs it by its ``kind``.
The two catalogues differ in counts only, so a quick run exercises every code path.

Only the benchmark's modules import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["MiB", "Workload", "FULL_WORKLOADS", "QUICK_WORKLOADS"]

MiB: Final = 2**20


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
