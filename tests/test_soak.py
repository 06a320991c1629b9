"""``python -m callosum_like soak`` runs, kills and restarts its servers, and reports.

A few seconds only, to keep the soak from rotting; ``make soak`` runs the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from callosum_like import AuthenticationError, PeerDisconnectedError
from callosum_like.tools.soak.churn import FD_SLACK, Sample, judge_flat
from callosum_like.tools.soak.tally import GRACE, Tally

pytestmark = pytest.mark.timeout(90)


def run_soak(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m callosum_like soak ARGV``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "callosum_like", "soak", *argv],
        capture_output=True,
        text=True,
        timeout=80,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )


@pytest.mark.slow
def test_a_short_soak_passes_and_reports(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    argv = ["--duration", "6", "--kill-interval", "2", "--flood", "2000", "--clients", "2"]
    done = run_soak(*argv, "--json", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    for line in ("calls made:", "failures by kind:", "client RSS:", "result: PASSED"):
        assert line in done.stdout
    report = json.loads(report_path.read_text())
    # Two kills are due in 6 s; a loaded machine may get to only one before the end.
    assert set(report["kills"]) == {"zeromq", "tcp"}
    assert min(report["kills"].values()) >= 1
    assert set(report["unexpected"]) == set()
    # A kill in the middle of a CURVE handshake looks like a refused key (see tools/soak/tally.py).
    assert set(report["failures"]) <= {"PeerDisconnectedError", "AuthenticationError"}
    assert report["refused"] > 0  # the flood met max_pending
    assert {"echo", "call_back", "stream", "churn", "error", "big"} <= set(report["ok"])


def test_disconnects_count_as_expected_only_around_a_kill() -> None:
    tally = Tally()
    tally.failed("tcp", ConnectionError())  # not an RPC error a kill explains
    tally.failed("tcp", PeerDisconnectedError("before any kill"))
    tally.killed("tcp")
    tally.failed("tcp", PeerDisconnectedError("while it is down"))
    tally.restarted("tcp")
    tally.failed("tcp", PeerDisconnectedError("just after"))
    tally.failed("zeromq", PeerDisconnectedError("the other transport was not killed"))
    tally.failed("zeromq", AuthenticationError("security handshake failed (wrong server key?)"))
    assert tally.failures == {
        "ConnectionError": 1,
        "PeerDisconnectedError": 4,
        "AuthenticationError": 1,
    }
    assert tally.unexpected == {
        "ConnectionError": 1,
        "PeerDisconnectedError": 2,
        "AuthenticationError": 1,  # zeromq was never killed
    }
    assert tally.windows["tcp"][0].end is not None
    assert GRACE > 0


@pytest.mark.slow
def test_a_short_churn_soak_passes_and_reports(tmp_path: Path) -> None:
    report_path = tmp_path / "churn.json"
    argv = ["--churn", "--agents", "20", "--agent-processes", "2", "--churn-interval", "0.5"]
    done = run_soak(*argv, "--duration", "4", "--json", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    for line in ("zeromq: PASSED", "tcp: PASSED", "bound-side RSS high", "result: PASSED"):
        assert line in done.stdout
    assert "CHURN 1 replaced" in done.stdout  # a tenth of each process's 10 agents
    report = json.loads(report_path.read_text())
    assert report["options"]["agents"] == 20
    for transport in ("zeromq", "tcp"):
        result = report["transports"][transport]
        assert result["passed"] is True
        assert len(result["samples"]) >= 8  # one every 0.5 s for 4 s
        assert all(sample["fds"] > 0 and sample["rss_mib"] > 0 for sample in result["samples"])
        assert result["replaced"] >= result["replacements_due"] // 2 > 0
        assert result["connections"] >= 20 + result["replaced"]
        assert "heartbeat lost" not in result["disconnections"]
        assert result["links_left"] == 0
        assert result["rss_flat"] is True
        assert result["fds_flat"] is True
        assert result["fds_before"] > 0
        assert result["fds_after"] <= result["fds_before"] + FD_SLACK


def samples(rss: list[float]) -> list[Sample]:
    return [Sample(at=float(i), rss_mib=r, fds=100, connected=100) for i, r in enumerate(rss)]


def test_flat_means_the_last_memory_highs_stay_near_the_first() -> None:
    steady = judge_flat(samples([50.0, 51, 50, 52, 50, 51] * 3))
    assert steady["rss_flat"] is True
    assert steady["rss_growth_percent"] == 0
    assert (steady["fds_median_first"], steady["fds_median_last"]) == (100, 100)
    # Memory growing by a tenth over the run is not flat; by 5 % it is.
    assert judge_flat(samples([50 + i / 2 for i in range(18)]))["rss_flat"] is False
    assert judge_flat(samples([50.0] * 6 + [52.5] * 6))["rss_flat"] is True
    # One high sample at the start is what the end is held to, not the start's low.
    assert judge_flat(samples([50.0, 54.0] + [50.0] * 8 + [53.0] * 2))["rss_flat"] is True
    assert judge_flat(samples([50.0])) == {"rss_flat": False}
