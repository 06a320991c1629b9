"""Every script in examples/ runs to completion, as a user would run it, under a timeout."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: Show every warning (ResourceWarning included) on the child's stderr, where we look for it.
ENV = {**os.environ, "PYTHONWARNINGS": "default"}


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""  # no warnings, no log noise
    return result


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next line of the process's stdout, or fail after ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return process.stdout.readline()


@pytest.mark.timeout(90)
def test_simple_client_self_contained() -> None:
    out = run_example("simple-client.py", "--self-contained").stdout
    assert "started the server in this process on tcp://127.0.0.1:" in out
    assert "echo -> {'greeting': 'hello', 'numbers': [1, 2, 3], 'raw': b'\\x00\\x01'}" in out
    assert "add [1, 2, 3.5] -> 6.5" in out
    assert "add ['one', 2] -> the server raised TypeError(" in out
    assert "multiply -> MethodNotFoundError" in out
    assert out.rstrip().endswith("client done")


@pytest.mark.timeout(90)
def test_simple_server_and_client_in_two_processes() -> None:
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / "simple-server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    ) as server:
        try:
            first = read_line(server, timeout=20)
            match = re.match(r"serving on tcp://127\.0\.0\.1:(\d+) ", first)
            assert match, first
            client = run_example("simple-client.py", "--port", match[1])
            assert "add [1, 2, 3.5] -> 6.5" in client.stdout
            assert "client done" in client.stdout
            server.send_signal(signal.SIGTERM)
            out, err = server.communicate(timeout=20)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()
    assert server.returncode == 0, out + err
    assert err == ""
    assert "server closed after serving 4 calls" in out


@pytest.mark.timeout(90)
def test_ordering() -> None:
    lines = {
        line[:11].strip(): line
        for line in run_example("ordering.py").stdout.splitlines()
        if line.startswith(("UNORDERED ", "ORDERED ", "SERIALIZED ", "two keys "))
    }
    assert set(lines) == {"UNORDERED", "ORDERED", "SERIALIZED", "two keys"}
    # Guaranteed by the orderings (timing-independent):
    assert "replies 1 2 3 4" in lines["ORDERED"]
    assert "started 1 2 3 4 | finished 1 2 3 4 | replies 1 2 3 4 | at once 1" in lines["SERIALIZED"]
    # Side by side: #2 (50 ms) arrives while #1 (200 ms) runs, unless the machine stalls
    # for 200 ms. All 4 at once would need all of them within 50 ms: not on a loaded machine.
    at_once = {name: int(re.findall(r"at once (\d+)", line)[0]) for name, line in lines.items()}
    assert at_once["UNORDERED"] > 1
    assert at_once["ORDERED"] > 1
    assert at_once["two keys"] == 2  # each key serialized, the two keys side by side


@pytest.mark.timeout(90)
def test_bidirectional() -> None:
    out = run_example("bidirectional.py").stdout
    assert "hub     connected peers: ['worker-1']" in out
    assert "hub     -> worker-1.status() = {'lookups served': 0}" in out
    served = out.index("hub     serving translate(['hello', 'world']) for 'worker-1'")
    called_back = out.index("hub       -> worker-1.lookup('hello') = 'bonjour'")
    answered = out.index("worker  <- ['bonjour', 'monde']")
    assert served < called_back < answered  # the callbacks happen inside the worker's call
    assert "hub     -> worker-1.status() = {'lookups served': 2}" in out


@pytest.mark.timeout(90)
def test_file_transfer() -> None:
    out = run_example("file_transfer.py", "--size", "8").stdout
    lines = out.replace("\r", "\n").splitlines()
    assert any(line.startswith("upload   [#########################] 100%") for line in lines)
    assert any(line.startswith("download 8.0 MiB in ") for line in lines)
    assert "checksums match: " in out
    assert re.search(r"\d+ small calls during the transfers", out)


@pytest.mark.timeout(90)
def test_observability() -> None:
    out = run_example("observability.py").stdout
    assert re.search(r"console: http://127\.0\.0\.1:\d+/ ", out)
    assert "manager -> rack-1/agent-2.work(1) = 'noted: agent-2 did 1'" in out
    trace = (
        "└─ work    CLIENT to rack-1/agent-1\n"
        "   ├─ work    RELAY  rack-1 to agent-1\n"
        "   └─ work    SERVER from rack-1\n"
        "      └─ report  CLIENT to rack-1\n"
        "         ├─ report  RELAY  rack-1 to manager\n"
        "         └─ report  SERVER from rack-1/agent-1\n"
    )
    assert trace in out  # the call and its call back: one trace, through the relay
    assert out.count("trace ") == 2
    assert 'callosum_like_server_requests_total{method="report",outcome="ok"} 2.0' in out
    assert 'callosum_like_relay_forwarded_total{method="work",outcome="ok"} 2.0' in out


@pytest.mark.timeout(30)
def test_every_example_is_tested_and_documented() -> None:
    names = sorted(path.name for path in EXAMPLES.glob("*.py"))
    # The Thrift and schema examples are run by tests/upper/test_examples.py.
    assert names == [
        "bidirectional.py",
        "file_transfer.py",
        "fleet.py",
        "nats_federation.py",
        "observability.py",
        "ordering.py",
        "quic.py",
        "schema_client.py",
        "schema_server.py",
        "simple-client.py",
        "simple-server.py",
        "thrift_client.py",
        "thrift_server.py",
    ]
    for name in names:
        text = (EXAMPLES / name).read_text(encoding="utf-8")
        assert text.startswith('"""'), f"{name} has no docstring"
        assert f"examples/{name}" in text.split('"""')[1], f"{name} does not say how to run it"


FEDERATION = EXAMPLES / "federation"


@pytest.mark.timeout(90)
def test_federation_demo() -> None:
    out = run_example("federation/demo.py").stdout
    for name in ("cluster-a/agent-1", "cluster-a/agent-2"):
        assert f'manager  -> {name}.hello() = "hello manager from {name[10:]};' in out
    for name in ("cluster-a/cluster-b/agent-3", "cluster-a/cluster-b/agent-4"):
        assert f'manager  -> {name}.hello() = "hello manager from {name[20:]};' in out
        # The agent called back into the manager while it answered, through two relays.
        assert f"manager  <- {name} reports {{'pid': " in out
        assert f"the manager said 'noted, {name}'" in out
    assert "manager  -- cluster-a/cluster-b is a relay" in out
    assert "manager  done: greeted 4 agents" in out
    assert out.rstrip().endswith("demo finished (manager exit status 0)")


def test_federation_scripts_are_documented() -> None:
    names = sorted(path.name for path in FEDERATION.glob("*.py"))
    assert names == ["agent.py", "cli.py", "demo.py", "manager.py", "relay.py"]
    for name in names:
        text = (FEDERATION / name).read_text(encoding="utf-8")
        assert text.startswith('"""'), f"{name} has no docstring"
        assert f"examples/federation/{name}" in text.split('"""')[1], name


@pytest.mark.timeout(90)
def test_nats_federation_demo() -> None:
    """A manager on a hub nats-server, agents behind a leaf node, calls both ways."""
    out = run_example("nats_federation.py").stdout
    assert "(dialled out to the hub)" in out
    for name in ("agent-1", "agent-2"):
        assert f"manager  <- {name} reports {{'pid': " in out
        assert f'manager  -> {name}.hello() = "hello manager from {name};' in out
        assert f"the manager said 'noted, {name}'" in out
    assert out.rstrip().endswith("demo finished")


@pytest.mark.timeout(90)
def test_fleet() -> None:
    out = run_example("fleet.py", "--agents", "4").stdout
    assert "manager: 4 agents connected" in out
    assert "manager: agent-0 -> RPCTimeoutError" in out
    assert re.search(r"manager: agent-3 -> \d+(\.\d+)?\n", out)
    assert "manager: 3 of 4 answered within 1 s" in out
    assert "agent-x: peers ['manager']; replies ['worker 0', 'worker 1']" in out


@pytest.mark.timeout(90)
def test_quic_client_is_known_by_its_certificate() -> None:
    out = run_example("quic.py").stdout
    assert "client  whoami -> you are 'agent-7'" in out
    assert "server  knows ['agent-7']" in out
    assert out.rstrip().endswith("done")
