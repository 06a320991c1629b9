"""The federation demo: a manager, two chained relays and four agents, as seven processes.

    .venv/bin/python examples/federation/demo.py        (or: make demo-federation)

Everything runs on 127.0.0.1 with CURVE on every hop (keys are made in a temporary
directory). The topology::

    manager <- cluster-a <- agent-1, agent-2
                         <- cluster-b <- agent-3, agent-4

The manager calls each agent by its hierarchical name (``cluster-a/cluster-b/agent-3``);
each agent calls back into the manager while it answers. Once all four said hello, the demo
stops the agents, then the relays, then the manager, and exits 0. Each process's output
is shown as it comes. The children also stop when the demo's end of their stdin closes, so
none is left behind even if the demo is killed.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
from pathlib import Path

from callosum_like import auth

HERE = Path(__file__).resolve().parent
#: Seconds the whole demo may take; it needs two or three.
DEMO_TIMEOUT = 60.0
#: Each relay, in start order: where it connects, and who connects to it.
RELAYS = {
    "cluster-a": ("manager", ["agent-1", "agent-2", "cluster-b"]),
    "cluster-b": ("cluster-a", ["agent-3", "agent-4"]),
}
AGENTS = {name: relay for relay, (_, down) in RELAYS.items() for name in down if name not in RELAYS}


class Processes:
    """The children of the demo: started in order, their lines printed, all stopped at the end."""

    def __init__(self, keys: Path) -> None:
        self.keys = keys
        self.children: list[asyncio.subprocess.Process] = []
        self.readers: list[asyncio.Task[None]] = []
        self.awaited: list[tuple[str, asyncio.Future[str]]] = []

    def expect(self, text: str) -> asyncio.Future[str]:
        """A future of the first line, from any child, that contains ``text``."""
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.awaited.append((text, found))
        return found

    async def start(self, script: str, *args: str, ready: str = "") -> str:
        """Run ``script``; with ``ready``, wait for the line that contains it and return it."""
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE / script), *args, "--keys", str(self.keys), "--stop-on-eof",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.children.append(child)
        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.readers.append(asyncio.create_task(self._show(child, ready, found)))
        return await asyncio.wait_for(found, 20) if ready else ""

    async def _show(
        self, child: asyncio.subprocess.Process, ready: str, found: asyncio.Future[str]
    ) -> None:
        assert child.stdout is not None
        async for raw in child.stdout:
            line = raw.decode().rstrip()
            print(line, flush=True)
            if ready and ready in line and not found.done():
                found.set_result(line)
            for text, future in self.awaited:
                if text in line and not future.done():
                    future.set_result(line)
        if ready and not found.done():
            found.set_exception(RuntimeError(f"a child exited before printing {ready!r}"))

    async def stop(self) -> None:
        # Leaves first, one at a time: an agent still running while its relay goes away would
        # try to reconnect and be refused, which is noise in a demo, not news.
        for child in reversed(self.children):
            if child.returncode is None:
                child.terminate()
            if child.stdin is not None:
                child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), 10)
            except TimeoutError:
                child.kill()
                await child.wait()
        await asyncio.gather(*self.readers, return_exceptions=True)


def address_in(line: str) -> str:
    match = re.search(r"tcp://\S+", line)
    assert match, line
    return match[0]


async def run(keys: Path) -> int:
    for name in ("manager", *RELAYS, *AGENTS):
        auth.save_keypair(auth.generate_keypair(), keys / name)
    processes = Processes(keys)
    try:
        all_greeted = processes.expect("agents greeted")
        line = await processes.start(
            "manager.py", "--expect", str(len(AGENTS)), "--wait-after", "--allow", "cluster-a",
            ready="listening",
        )  # fmt: skip
        manager = processes.children[0]
        addresses = {"manager": address_in(line)}
        for name, (upstream, below) in RELAYS.items():
            line = await processes.start(
                "relay.py", "--name", name, "--upstream", addresses[upstream],
                "--upstream-name", upstream, "--allow", ",".join(below), ready="listening",
            )  # fmt: skip
            addresses[name] = address_in(line)
        for agent, relay in AGENTS.items():
            await processes.start(
                "agent.py", "--name", agent, "--connect", addresses[relay], "--server-name", relay
            )
        await asyncio.wait_for(all_greeted, DEMO_TIMEOUT)
    finally:
        await processes.stop()  # agents, then relays, then the manager
    status = manager.returncode
    print(f"demo finished (manager exit status {status})", flush=True)
    return status


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="federation-keys-") as keys:
        return asyncio.run(run(Path(keys)))


if __name__ == "__main__":
    sys.exit(main())
