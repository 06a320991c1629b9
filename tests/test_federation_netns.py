"""Federation across three hosts made of Linux network namespaces (needs root and iproute2).

The one test here is the sanctioned exception to "127.0.0.1 only": it uses 10.231.x.y
addresses, and only inside the namespaces it creates (named with our pid) and tears down
afterwards, whatever happens. It never touches the host's own interfaces or routes::

    manager host fedm-<pid>     relay host fedr-<pid>          agent host feda-<pid>
    m0 10.231.1.1  <--veth-->  r0 10.231.1.2
                               r1 10.231.2.1  <--veth-->  a0 10.231.2.2

No namespace has a default route, and the relay host has ``net.ipv4.ip_forward=0``, so the
agent host can reach the relay and nothing beyond it. The manager, the relay and the agent
are the scripts of examples/federation/, each run with ``ip netns exec``, with CURVE on
both hops. The test shows that the agent cannot connect to the manager directly, then
calls both ways through the relay, then kills the relay (SIGKILL) and restarts it at the
same address and shows the calls work again without anyone else doing anything.

Where namespaces cannot be made (not root, no ``ip``, no permission in a container), the
test is skipped and the skip says why; CI runs as root and runs it.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callosum_like import auth

pytestmark = pytest.mark.timeout(90)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "federation"
PID = os.getpid()
MANAGER_NS, RELAY_NS, AGENT_NS = (f"fed{role}-{PID}" for role in "mra")
MANAGER_IP, RELAY_UP_IP, RELAY_DOWN_IP, AGENT_IP = (
    "10.231.1.1",
    "10.231.1.2",
    "10.231.2.1",
    "10.231.2.2",
)
#: Seconds to wait for any one expected line (a relay loss is seen within the scripts'
#: heartbeat_timeout of 3 s).
LINE_TIMEOUT = 20.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def in_namespace(namespace: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


def create_hosts() -> None:
    """The three namespaces and two veth pairs, made inside the namespaces themselves."""
    for namespace in (MANAGER_NS, RELAY_NS, AGENT_NS):
        ip("netns", "add", namespace)
        ip("-n", namespace, "link", "set", "lo", "up")
    for here, there, left, right, left_ip, right_ip in (
        (MANAGER_NS, RELAY_NS, f"m0-{PID}", f"r0-{PID}", MANAGER_IP, RELAY_UP_IP),
        (RELAY_NS, AGENT_NS, f"r1-{PID}", f"a0-{PID}", RELAY_DOWN_IP, AGENT_IP),
    ):
        left, right = left[:15], right[:15]  # interface names have at most 15 bytes
        ip("-n", here, "link", "add", left, "type", "veth", "peer", "name", right, "netns", there)
        ip("-n", here, "addr", "add", f"{left_ip}/24", "dev", left)
        ip("-n", there, "addr", "add", f"{right_ip}/24", "dev", right)
        ip("-n", here, "link", "set", left, "up")
        ip("-n", there, "link", "set", right, "up")
    forward = "/proc/sys/net/ipv4/ip_forward"
    subprocess.run(
        in_namespace(RELAY_NS, "sh", "-c", f"echo 0 > {forward} && cat {forward}"),
        check=True,
        capture_output=True,
        timeout=30,
    )


def delete_hosts() -> None:
    for namespace in (MANAGER_NS, RELAY_NS, AGENT_NS):  # deleting one deletes its veth ends
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


class Script:
    """One examples/federation script running in a namespace, its output read line by line.

    A thread moves the output into a queue as it comes, so that waiting for a line never
    depends on how the pipe happens to be buffered.
    """

    def __init__(self, namespace: str, name: str, *args: str) -> None:
        command = [sys.executable, str(EXAMPLES / name), *args, "--stop-on-eof"]
        self.process = subprocess.Popen(
            in_namespace(namespace, *command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip())
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = LINE_TIMEOUT) -> re.Match[str]:
        """Read lines until one matches ``pattern``; fail with everything read otherwise."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        pytest.fail(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.lines))

    def wait(self) -> int:
        """Wait for the script to end on its own; its exit status."""
        return self.process.wait(timeout=LINE_TIMEOUT)

    def stop(self, *, kill: bool = False) -> int:
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        return self.process.returncode


@pytest.fixture
def hosts() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs this test as root)")
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    try:
        create_hosts()
    except subprocess.CalledProcessError as exc:
        delete_hosts()
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.strip()}")
    try:
        yield
    finally:
        delete_hosts()


@pytest.fixture
def scripts() -> Iterator[list[Script]]:
    """Every script started by the test; all are stopped at the end, even on failure."""
    started: list[Script] = []
    try:
        yield started
    finally:
        for script in reversed(started):
            script.stop()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for name in ("manager", "cluster-b", "agent-1"):
        auth.save_keypair(auth.generate_keypair(), tmp_path / name)
    return tmp_path


def test_manager_and_agent_call_each_other_through_a_relay_host(
    hosts: None, scripts: list[Script], keys: Path
) -> None:
    def start(namespace: str, name: str, *args: str) -> Script:
        scripts.append(Script(namespace, name, *args, "--keys", str(keys)))
        return scripts[-1]

    # The manager would take agent-1 directly: only the network stands in the way.
    manager = start(
        MANAGER_NS, "manager.py", "--bind", f"tcp://{MANAGER_IP}:0", "--allow", "cluster-b,agent-1"
    )
    port = manager.expect(rf"manager listening on tcp://{re.escape(MANAGER_IP)}:(\d+)")[1]
    probe = subprocess.run(
        in_namespace(
            AGENT_NS,
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('{MANAGER_IP}', {port}), timeout=3)",
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert probe.returncode != 0
    assert "unreachable" in probe.stderr.lower(), probe.stderr
    direct = start(
        AGENT_NS, "agent.py", "--name", "agent-1", "--server-name", "manager",
        "--connect", f"tcp://{MANAGER_IP}:{port}", "--connect-timeout", "2",
    )  # fmt: skip
    direct.expect(r"agent-1 could not connect to tcp://")
    assert direct.wait() == 1

    relay_args = ("--name", "cluster-b", "--allow", "agent-1", "--upstream-name", "manager")
    relay_args += ("--upstream", f"tcp://{MANAGER_IP}:{port}")
    relay = start(RELAY_NS, "relay.py", *relay_args, "--bind", f"tcp://{RELAY_DOWN_IP}:0")
    relay_port = relay.expect(rf"cluster-b listening on tcp://{re.escape(RELAY_DOWN_IP)}:(\d+)")[1]
    relay.expect(r"cluster-b connected upstream")
    relay_address = f"tcp://{RELAY_DOWN_IP}:{relay_port}"
    start(
        AGENT_NS,
        "agent.py",
        "--name",
        "agent-1",
        "--server-name",
        "cluster-b",
        "--connect",
        relay_address,
    )

    def calls_cross_both_ways() -> None:
        # manager -> agent by its hierarchical name; the agent calls back while answering.
        manager.expect(r"manager  <- cluster-b/agent-1 reports \{'pid': \d+")
        manager.expect(
            r"manager  -> cluster-b/agent-1\.hello\(\) = \"hello manager from agent-1; "
            r"the manager said 'noted, cluster-b/agent-1'\""
        )

    calls_cross_both_ways()

    # The relay host's relay dies; the manager notices; a new one starts at the same address.
    assert relay.stop(kill=True) == -9
    manager.expect(r"manager  \.\. cluster-b/agent-1 disconnected")
    restarted = start(RELAY_NS, "relay.py", *relay_args, "--bind", relay_address)
    restarted.expect(r"cluster-b connected upstream")
    manager.expect(r"manager  \.\. cluster-b/agent-1 connected")
    calls_cross_both_ways()
