"""The resumption figures' verdict and tables, from a report written by hand (no root needed).

``make resume-figures`` runs the real thing; here, what it concludes from its numbers.
"""

from __future__ import annotations

import copy
from typing import Any

from callosum_like.tools.flaps.figures import format_figures, passed

VERDICT = {
    "calls": 120,
    "by_kind": {"small": 100, "big": 12, "stream": 8},
    "failed": {},
    "duplicates": 0,
    "missing": 0,
    "strangers": 0,
    "streams": 8,
    "lost_items": 0,
    "repeated_items": 0,
    "reordered_streams": 0,
    "passed": True,
}
REPORT: dict[str, Any] = {
    "date": "2026-12-05T00:00:00+00:00",
    "seconds": 60,
    "host": {"cpus": 2, "cpu": "a CPU", "kernel": "6.1"},
    "flaps": {
        "tcp": {
            "flaps": [["a", 1.5, 0.4], ["m", 2.5, 0.6]],
            "recovery": {"median": 0.5, "longest": 0.6},
            "stalled": False,
            "paths": {"tcp direct": {"verdict": VERDICT, "sessions_resumed": 2}},
        }
    },
    "long": {
        "tcp": {
            "pending": 6,
            "failed_as_disconnected": 6,
            "other_failures": 0,
            "seconds": {"min": 3.0, "median": 3.1, "max": 3.2},
            "bound": 3.0,
            "slack": 0.75,
            "ran_once": True,
            "cancelled_once": True,
        }
    },
    "conditions": {
        "tcp": {
            "clean": {
                "small_p50_ms": 0.3,
                "small_p99_ms": 1.0,
                "big_mib_per_s": [300.0, 310.0, 290.0],
                "failed": 0,
            }
        }
    },
}


def changed(path: list[str], value: Any) -> dict[str, Any]:
    """``REPORT`` with the value at ``path`` replaced."""
    report = copy.deepcopy(REPORT)
    where = report
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return report


def test_a_report_that_kept_every_promise_passes_and_shows_its_tables() -> None:
    assert passed(REPORT)
    text = format_figures({**REPORT, "passed": True})
    assert "| tcp direct | 2 | 120 (100/12/8) | 0 | 0 | 0 | 0/0 | 0 | 2 | 0.50/0.60 |" in text
    assert "| tcp | 6 | 6 | 0 | 3.00/3.10/3.20 | 3 | yes |" in text
    assert "| tcp | clean | 0.30 | 1.0 | 300.0 | 0 |" in text  # the median upload
    assert text.endswith("result: PASSED")


def test_any_broken_promise_fails_the_figures() -> None:
    failed = {**VERDICT, "failed": {"PeerDisconnectedError": 1}, "passed": False}
    assert not passed(changed(["flaps", "tcp", "paths", "tcp direct", "verdict"], failed))
    assert not passed(changed(["flaps", "tcp", "stalled"], True))
    assert not passed(changed(["long", "tcp", "failed_as_disconnected"], 5))
    assert not passed(changed(["long", "tcp", "other_failures"], 1))
    assert not passed(changed(["long", "tcp", "seconds", "max"], 3.8))  # past bound + slack
    assert not passed(changed(["long", "tcp", "ran_once"], False))
    assert passed(changed(["long", "tcp", "seconds", "max"], 3.7))  # within the slack
