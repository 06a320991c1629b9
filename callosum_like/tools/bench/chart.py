"""The benchmark's chart: ratios to the reference system as grouped bars, on a log axis.

Theory of operation: drawn only when matplotlib is installed and the reference system gave
figures; otherwise ``write_chart`` says why not, for the run's last line. matplotlib is
imported on use (``Agg`` backend), as it is optional.

Only the benchmark's modules import this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import PRIMARY, speedup
from .steps import Summary
from .systems import REFERENCE, SYSTEMS
from .workloads import Workload

__all__ = ["write_chart"]


def write_chart(
    workloads: Sequence[Workload], summaries: dict[tuple[str, str], Summary], path: Path
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
    summaries: dict[tuple[str, str], Summary], system: str, workload: Workload
) -> float | None:
    summary = summaries.get((system, workload.key))
    if summary is None:
        return None
    return speedup(summary, summaries.get((REFERENCE, workload.key)), workload.group)


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
    metric, _ = PRIMARY[workload.group]
    names = {"calls_per_s": "calls/s", "mb_per_s": "MB/s", "p99_us": "small-call p99"}
    return f"{workload.key}\n{names[metric]}"
