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
from callosum_like.tools.soak.tally import GRACE, Tally

pytestmark = pytest.mark.timeout(90)


@pytest.mark.slow
def test_a_short_soak_passes_and_reports(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    argv = ["--duration", "6", "--kill-interval", "2", "--flood", "2000", "--clients", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "callosum_like", "soak", *argv, "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=80,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        check=False,
    )
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
