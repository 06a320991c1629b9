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
from callosum_like.tools.soak.churn import Sample, judge_flat
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


def samples(rss: list[float], fds: list[int]) -> list[Sample]:
    return [
        Sample(at=float(i), rss_mib=r, fds=f, connected=100)
        for i, (r, f) in enumerate(zip(rss, fds, strict=True))
    ]


def test_flat_means_the_last_highs_stay_near_the_first() -> None:
    steady = samples([50.0, 51, 50, 52, 50, 51] * 3, [1_000, 900, 1_000] * 6)
    verdict = judge_flat(steady, agents=1_000)
    assert (verdict["rss_flat"], verdict["fds_flat"]) == (True, True)
    assert verdict["rss_growth_percent"] == 0
    assert verdict["fds_growth"] == 0
    # Memory growing by a tenth over the run is not flat; nor are open files growing by 2 %.
    growing = samples([50 + i / 2 for i in range(18)], [1_000 + 2 * i for i in range(18)])
    verdict = judge_flat(growing, agents=1_000)
    assert (verdict["rss_flat"], verdict["fds_flat"]) == (False, False)
    # Within the tolerances: 5 % of memory, and 1 % of the agents in files (16 at least).
    within = samples([50.0] * 6 + [52.5] * 6, [1_000] * 6 + [1_010] * 6)
    assert judge_flat(within, agents=1_000)["rss_flat"] is True
    assert judge_flat(within, agents=1_000)["fds_flat"] is True
    assert judge_flat(within, agents=10)["fds_flat"] is True  # the slack of 16 files
    assert judge_flat(samples([50.0], [10]), agents=10) == {"rss_flat": False, "fds_flat": False}
