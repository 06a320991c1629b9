"""``python -m callosum_like soak --network``: a short run flaps links, nothing fails, it reports.

Needs root (skipped otherwise, with the reason). A few seconds only, to keep the network
soak from rotting; ``make soak-network`` runs the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from callosum_like.tools.netbed.commands import namespaces
from callosum_like.tools.netbed.plan import PREFIX

from .conftest import needs_bed

pytestmark = [needs_bed, pytest.mark.timeout(90)]


@pytest.mark.asyncio
async def test_a_short_network_soak_resumes_every_path_and_fails_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "network.json"
    argv = ["--network", "--duration", "6", "--flap-shortest", "1.2", "--flap-longest", "1.6"]
    soak = subprocess.Popen(
        [sys.executable, "-m", "callosum_like", "soak", *argv, "--json", str(report_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    output, _ = soak.communicate(timeout=80)
    assert soak.returncode == 0, output
    for line in ("link flaps:", "sessions resumed", "failed calls: none", "result: PASSED"):
        assert line in output
    report = json.loads(report_path.read_text())
    assert len(report["flaps"]) >= 2  # the precondition: links went down and came back
    assert not report["stalled"]
    labels = {"zeromq direct", "zeromq via a relay", "tcp direct", "tcp via a relay"}
    assert set(report["paths"]) == labels
    for path in report["paths"].values():
        verdict = path["verdict"]
        assert {"small", "big", "stream"} <= set(verdict["by_kind"])
        assert path["sessions_resumed"] >= 1  # each path was cut and resumed
        assert verdict["failed"] == {}
        assert (verdict["duplicates"], verdict["missing"], verdict["lost_items"]) == (0, 0, 0)
        assert verdict["passed"] is True
    # The soak's bed went with it.
    assert [n for n in await namespaces() if n.startswith(f"{PREFIX}-{soak.pid}-")] == []
