"""The benchmark's tables and targets, as aligned text and as Markdown.

Theory of operation: one table per workload, a row per system in the order they ran, the
columns of the workload's group (``COLUMNS``) as medians with their spread over repeats, and
the ratio to ``systems.REFERENCE`` on the group's primary figure (``PRIMARY``); the fleet
workloads (W6, W7) run on this project only, so their tables have no ratio. Below, the
issues' targets (``TARGETS``) judged met, not met, or n/a when a figure is missing.

Only the benchmark's modules import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .steps import Summary
from .systems import REFERENCE, label_of
from .workloads import Workload

__all__ = [
    "COLUMNS",
    "PRIMARY",
    "TARGETS",
    "Judged",
    "format_value",
    "speedup",
    "table_rows",
    "tables",
    "render_text",
    "render_markdown",
    "judge",
    "target_rows",
]

#: Table columns per workload group: (header, metric, unit).
COLUMNS: Final[dict[str, tuple[tuple[str, str, str], ...]]] = {
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
        ("beyond its body", "client_peak_beyond_bodies_mib", "MiB"),
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
    "W6": (
        ("agents", "agents", "count"),
        ("RSS/agent", "rss_kib_per_agent", "KiB"),
        ("bound RSS", "hub_rss_mib", "MiB"),
        ("fds/agent", "fds_per_agent", "ratio"),
        ("idle CPU", "idle_cpu_percent", "%"),
        ("connect", "connect_seconds", "s"),
    ),
    "W7": (
        ("agents", "agents", "count"),
        ("p50", "p50_us", "us"),
        ("p99", "p99_us", "us"),
        ("calls/s", "calls_per_s", ""),
        ("CPU/round", "cpu_ms_per_round", "ms"),
    ),
}
#: The figure each workload group is compared on, and whether higher is better (the fleet
#: workloads are compared with nothing).
PRIMARY: Final[dict[str, tuple[str, bool]]] = {
    "W1": ("calls_per_s", True),
    "W2": ("calls_per_s", True),
    "W3": ("mb_per_s", True),
    "W4": ("p99_us", False),
    "W5": ("mb_per_s", True),
}


def format_value(value: float, unit: str) -> str:
    """``value`` for a table cell: microseconds as us or ms, a size, a share, or a rate."""
    if unit == "us":
        return f"{value / 1000:,.1f} ms" if value >= 1000 else f"{value:,.0f} us"
    if unit == "MiB":
        return f"{value:,.1f} MiB"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "%":
        return f"{value:,.2f} %"
    if unit in ("KiB", "s", "ms"):
        return f"{value:,.1f} {unit}"
    if unit == "ratio":
        return f"{value:,.2f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def speedup(summary: Summary, reference: Summary | None, group: str) -> float | None:
    """How many times better than the reference on the group's primary figure."""
    metric, higher = PRIMARY[group]
    ours = summary.median.get(metric)
    theirs = reference.median.get(metric) if reference is not None else None
    if not ours or not theirs:
        return None
    return ours / theirs if higher else theirs / ours


def table_rows(workload: Workload, summaries: dict[tuple[str, str], Summary]) -> list[list[str]]:
    """Header and one row per system for one workload's table."""
    columns = COLUMNS[workload.group]
    compared = workload.group in PRIMARY
    rows = [["system", *(c[0] for c in columns), *([f"x {REFERENCE}"] if compared else [])]]
    reference = summaries.get((REFERENCE, workload.key))
    for key in dict.fromkeys(system for system, _ in summaries):  # in the order they ran
        summary = summaries.get((key, workload.key))
        if summary is None:
            continue
        label = label_of(key)
        if summary.status != "ok":
            rows.append([label, f"{summary.status}: {summary.reason}"])
            continue
        cells = [_cell(summary, metric, unit) for _, metric, unit in columns]
        if not compared:
            rows.append([label, *cells])
            continue
        ratio = speedup(summary, reference, workload.group)
        rows.append([label, *cells, "" if ratio is None else f"{ratio:.2f}"])
    return rows


def _cell(summary: Summary, metric: str, unit: str) -> str:
    value = summary.median.get(metric)
    if value is None:
        return "n/a"
    spread = summary.spread(metric)  # none for a figure the runs share (a fleet's agents)
    return format_value(value, unit) + ("" if not spread else f" ±{spread:.0%}")


def render_text(rows: list[list[str]], left: int = 1) -> list[str]:
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


def render_markdown(rows: list[list[str]], left: int = 1) -> list[str]:
    """``rows`` as a Markdown table; the first ``left`` columns align left, the rest right."""
    width = len(rows[0])
    padded = [row if len(row) == width else [*row, *[""] * (width - len(row))] for row in rows]
    rule = "|" + "---|" * left + "---:|" * (width - left)
    lines = ["| " + " | ".join(padded[0]) + " |", rule]
    lines += [
        "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in padded[1:]
    ]
    return lines


def tables(
    workloads: Sequence[Workload], summaries: dict[tuple[str, str], Summary]
) -> tuple[list[str], list[str]]:
    """Every workload's table, as text lines and as Markdown lines."""
    text: list[str] = []
    markdown: list[str] = []
    for workload in workloads:
        rows = table_rows(workload, summaries)
        text += ["", f"{workload.key}: {workload.title}", *render_text(rows)]
        markdown += ["", f"#### {workload.key}: {workload.title}", "", *render_markdown(rows)]
    return text, markdown


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
    every_run: bool = False  # judge the worst run, not the median

    @property
    def goal(self) -> str:
        sign = ">=" if self.at_least else "<="
        runs = " in every run" if self.every_run else ""
        if self.reference is None:
            return f"{sign} {format_value(self.factor, unit_of(self.metric))}{runs}"
        return f"{sign} {self.factor:g} x {self.reference}{runs}"


def unit_of(metric: str) -> str:
    """The unit ``format_value`` gives a metric, from its name's suffix."""
    units = {"_us": "us", "_mib": "MiB", "_kib_per_agent": "KiB", "_percent": "%"}
    return next((unit for suffix, unit in units.items() if metric.endswith(suffix)), "")


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
    # Issue 19 (fleets): bound-side memory per idle agent, its idle CPU, the fan-out's p99.
    ("W6-1k RSS per idle agent", "like-zeromq", "W6-1k", "rss_kib_per_agent", False, 16, None),
    ("W6-1k RSS per idle agent", "like-tcp", "W6-1k", "rss_kib_per_agent", False, 8, None),
    ("W6-10k RSS per idle agent", "like-zeromq", "W6-10k", "rss_kib_per_agent", False, 16, None),
    ("W6-10k RSS per idle agent", "like-tcp", "W6-10k", "rss_kib_per_agent", False, 8, None),
    ("W6-10k idle CPU", "like-zeromq", "W6-10k", "idle_cpu_percent", False, 2, None),
    ("W6-10k idle CPU", "like-tcp", "W6-10k", "idle_cpu_percent", False, 2, None),
    ("W7 invoke_all p99", "like-zeromq", "W7", "p99_us", False, 100_000, None),
    ("W7 invoke_all p99", "like-tcp", "W7", "p99_us", False, 100_000, None),
    # Issue 22 (NATS): against a raw nats-py request-reply echo through the same server.
    ("W1 calls/s", "like-nats", "W1", "calls_per_s", True, 0.8, "raw-nats"),
    ("W2 calls/s", "like-nats", "W2", "calls_per_s", True, 0.8, "raw-nats"),
    ("W4 small-call p99", "like-nats", "W4", "p99_us", False, 5000, None),
    # Issue 24 (speed): ratios to the raw floors of the same run; memory as twice the 16 MiB
    # payload; W4 in every run (``_EVERY_RUN``).
    ("W1 calls/s, issue 24", "like-zeromq", "W1", "calls_per_s", True, 0.95, "raw-pyzmq"),
    ("W1 calls/s, issue 24", "like-tcp", "W1", "calls_per_s", True, 0.95, "raw-asyncio"),
    ("W2 calls/s, issue 24", "like-zeromq", "W2", "calls_per_s", True, 2.0, "raw-pyzmq"),
    ("W2 calls/s, issue 24", "like-tcp", "W2", "calls_per_s", True, 0.7, "raw-asyncio"),
    ("W3 16 MiB client RSS+", "like-zeromq", "W3-16MiB", "client_peak_rss_mib", False, 32, None),
    ("W3 16 MiB client RSS+", "like-tcp", "W3-16MiB", "client_peak_rss_mib", False, 32, None),
    ("W3 16 MiB server RSS+", "like-zeromq", "W3-16MiB", "server_peak_rss_mib", False, 32, None),
    ("W3 16 MiB server RSS+", "like-tcp", "W3-16MiB", "server_peak_rss_mib", False, 32, None),
    ("W4 small-call p99, issue 24", "like-zeromq", "W4", "p99_us", False, 5000, None),
    ("W4 small-call p99, issue 24", "like-tcp", "W4", "p99_us", False, 5000, None),
)
#: Rows judged on their worst run (issue 24: "in each of 5 consecutive runs").
_EVERY_RUN: Final = frozenset({"W4 small-call p99, issue 24"})
TARGETS: Final = tuple(
    _Target(
        row=r,
        system=s,
        workload=w,
        metric=m,
        at_least=a,
        factor=f,
        reference=ref,
        every_run=r in _EVERY_RUN,
    )
    for r, s, w, m, a, f, ref in _TARGET_TABLE
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Judged:
    """A target's verdict: ``met`` is None when a figure is missing."""

    target: str
    system: str
    goal: str
    metric: str
    value: float | None = None
    bound: float | None = None
    met: bool | None = None


def judge(target: _Target, summaries: dict[tuple[str, str], Summary]) -> Judged:
    """Judge ``target`` on the medians in ``summaries``."""
    judged = Judged(target=target.row, system=target.system, goal=target.goal, metric=target.metric)
    value = _median(summaries, target.system, target.workload, target.metric)
    if target.every_run:
        value = _worst(summaries, target)
    bound: float | None = target.factor
    if target.reference is not None:
        figure = _median(summaries, target.reference, target.workload, target.metric)
        bound = None if figure is None else figure * target.factor
    if value is None or bound is None:
        return judged
    met = value >= bound if target.at_least else value <= bound
    return dataclasses.replace(judged, value=round(value, 1), bound=round(bound, 1), met=met)


def _worst(summaries: dict[tuple[str, str], Summary], target: _Target) -> float | None:
    """The run of ``target``'s step furthest on the wrong side of its goal."""
    summary = summaries.get((target.system, target.workload))
    if summary is None:
        return None
    extreme = summary.low if target.at_least else summary.high
    return extreme.get(target.metric)


def _median(
    summaries: dict[tuple[str, str], Summary], system: str, workload: str, metric: str
) -> float | None:
    summary = summaries.get((system, workload))
    return None if summary is None else summary.median.get(metric)


def target_rows(judged: Sequence[Judged]) -> list[list[str]]:
    """Header and one row per judged target, for ``render_text``/``render_markdown``."""
    rows = [["target", "system", "goal", "measured", "bound", "verdict"]]
    for j in judged:
        unit = unit_of(j.metric)
        verdict = "n/a" if j.met is None else "met" if j.met else "NOT met"
        rows.append(
            [
                j.target,
                j.system,
                j.goal,
                "" if j.value is None else format_value(j.value, unit),
                "" if j.bound is None else format_value(j.bound, unit),
                verdict,
            ]
        )
    return rows
