"""The parent's side of the flap load: nodes in a bed's hosts, and the conductor that steers them.

Theory of operation: a ``Stage`` is a ``NetBed`` with hosts ``m`` (managers), ``r`` (relays)
and ``a`` (agents), plus a *conductor*: a Peer of this process bound on a Unix socket in a
temporary directory, to which every manager and agent node (``node``) connects a second Peer
by name. The file system is shared by all namespaces and untouched by the bed's knobs, so
the conductor reaches the nodes while their network is down or lossy; this process itself
sits outside the bed and cannot reach its addresses.

``open_path`` starts one *path*: a manager in ``m`` and an agent in ``a`` that connects to
it, directly or through a relay in ``r`` (each in a child process, ``bed.spawn``). A flap of
``a`` then breaks a direct path and a relayed path's lower hop; a flap of ``m``, a direct
path and a relayed path's upper hop. ``ask`` calls a node's control method; ``start``,
``progressed``, ``flap``, ``stop`` and ``results`` drive the load of several paths at once,
and ``results`` judges each path's books (``books.judge``) beside its peers' counters.

Only the flap tools (``scenarios``, ``figures``), the soak and the tests import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath
from types import TracebackType
from typing import Any, Final, Self

from ...addresses import UnixAddress
from ...peer import Peer
from ..netbed.bed import NetBed
from .books import judge

__all__ = [
    "HOSTS",
    "MANAGER_HOST",
    "RELAY_HOST",
    "AGENT_HOST",
    "CONTROL_TIMEOUT",
    "NODE",
    "Settings",
    "Path",
    "Stage",
]

#: The hosts of a stage's bed: managers, relays, agents.
HOSTS: Final = ("m", "r", "a")
MANAGER_HOST, RELAY_HOST, AGENT_HOST = HOSTS
#: Seconds a control call to a node may take, beyond what it waits for by design.
CONTROL_TIMEOUT: Final = 30.0
#: The module a node runs.
NODE: Final = "callosum_like.tools.flaps.node"
#: Seconds between two looks at the nodes' progress.
POLL_INTERVAL: Final = 0.05
#: The working identities: the manager, an agent, and a relay (agents behind it are
#: ``RELAY_IDENTITY/AGENT_IDENTITY`` to the manager).
MANAGER_IDENTITY: Final = "manager"
AGENT_IDENTITY: Final = "agent"
RELAY_IDENTITY: Final = "cluster"
#: The counters of each peer that a path's results show.
COUNTERS: Final = (
    "sessions_resumed",
    "resumes_refused",
    "reconnects",
    "disconnects",
    "links_refused",
    "dropped_messages",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The options of every node of a stage.

    Attributes:
        resume_timeout: ``Peer(resume_timeout=)`` of every peer and relay.
        heartbeat_interval: ``heartbeat_interval`` of every peer and relay.
        heartbeat_timeout: ``heartbeat_timeout`` of every peer and relay.
        big_size: Bytes of a large body.
    """

    resume_timeout: float = 20.0
    heartbeat_interval: float = 0.25
    heartbeat_timeout: float = 1.0
    big_size: int = 16 * 2**20

    def arguments(self) -> list[str]:
        """The node's command-line options for these settings."""
        return [
            "--resume-timeout", str(self.resume_timeout),
            "--heartbeat-interval", str(self.heartbeat_interval),
            "--heartbeat-timeout", str(self.heartbeat_timeout),
            "--big-size", str(self.big_size),
        ]  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Path:
    """A manager and an agent that call each other, directly or through a relay.

    Attributes:
        transport: ``zeromq`` or ``tcp``.
        relayed: Whether a relay stands between them.
        manager: The manager node's name at the conductor.
        agent: The agent node's name at the conductor.
    """

    transport: str
    relayed: bool
    manager: str
    agent: str

    @property
    def label(self) -> str:
        """``zeromq direct``, ``tcp via a relay``, ..."""
        return f"{self.transport} {'via a relay' if self.relayed else 'direct'}"

    @property
    def target(self) -> str:
        """The name the manager calls the agent by."""
        return f"{RELAY_IDENTITY}/{AGENT_IDENTITY}" if self.relayed else AGENT_IDENTITY

    @property
    def remote(self) -> str:
        """The identity of the agent's remote: the manager, or the relay."""
        return RELAY_IDENTITY if self.relayed else MANAGER_IDENTITY

    @property
    def nodes(self) -> tuple[str, str]:
        """The manager's and the agent's node names."""
        return self.manager, self.agent


class Stage:
    """Nodes in the hosts of ``bed`` (which has ``HOSTS``), and their conductor.

    Enter it with ``async with``; leaving stops every node and the conductor.

    Args:
        bed: An entered ``NetBed`` with at least the hosts of ``HOSTS``.
        settings: The nodes' options.
    """

    def __init__(self, bed: NetBed, settings: Settings) -> None:
        self.bed = bed
        self.settings = settings
        self._stack = contextlib.AsyncExitStack()
        self._conductor: Peer | None = None
        self._serials = itertools.count(1)
        #: Print the nodes' output, each line with its node's label (else only kept for
        #: the error of a node that did not start).
        self.relay_output = False

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="flaps-"))
            socket = str(FilePath(directory) / "conductor.sock")
            conductor = Peer(bind=UnixAddress(socket), identity="conductor")
            self._conductor = await stack.enter_async_context(conductor)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    # -- nodes and paths -------------------------------------------------------------------

    async def _spawn(self, host: str, label: str, *args: str) -> str:
        """Start a node in ``host``; return the address it printed once ready.

        Raises:
            RuntimeError: It exited before it was ready (with its last output).
        """
        child = self.bed.spawn(host, label, "-m", NODE, *args, relay=self.relay_output)
        await self._stack.enter_async_context(child)
        try:
            return await child.ready()
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{label} did not start: {exc!r}: {child.tail()}") from exc

    async def open_path(self, transport: str, *, relayed: bool) -> Path:
        """Start a manager, a relay if ``relayed``, and an agent; return the path."""
        number = next(self._serials)
        manager, agent = f"manager-{number}", f"agent-{number}"
        control = ["--transport", transport, "--control", self.control_socket]
        common = [*control, *self.settings.arguments()]
        address = await self._spawn(
            MANAGER_HOST, f"{transport} {manager}", "--role", "manager", "--name", manager,
            "--identity", MANAGER_IDENTITY, "--bind", self.bed.address(MANAGER_HOST), *common,
        )  # fmt: skip
        if relayed:
            address = await self._spawn(
                RELAY_HOST, f"{transport} relay-{number}", "--role", "relay",
                "--identity", RELAY_IDENTITY, "--bind", self.bed.address(RELAY_HOST),
                "--upstream", address, *common,
            )  # fmt: skip
        await self._spawn(
            AGENT_HOST, f"{transport} {agent}", "--role", "agent", "--name", agent,
            "--identity", AGENT_IDENTITY, "--connect", address, *common,
        )  # fmt: skip
        path = Path(transport=transport, relayed=relayed, manager=manager, agent=agent)
        assert self._conductor is not None
        await self._conductor.wait_for_peer(manager, timeout=CONTROL_TIMEOUT)
        await self._conductor.wait_for_peer(agent, timeout=CONTROL_TIMEOUT)
        return path

    @property
    def control_socket(self) -> str:
        """The conductor's Unix socket."""
        assert self._conductor is not None
        return self._conductor.address

    async def ask(self, node: str, method: str, body: Any = None, wait: float = 0.0) -> Any:
        """Call the control ``method`` of ``node`` and return its answer.

        Args:
            node: The node's name at the conductor.
            method: One of ``node.CONTROL_METHODS``.
            body: The call's body.
            wait: Seconds the method may take by design, beyond ``CONTROL_TIMEOUT``.
        """
        assert self._conductor is not None
        return await self._conductor.invoke(method, body, to=node, timeout=wait + CONTROL_TIMEOUT)

    # -- the load --------------------------------------------------------------------------

    async def start(self, paths: Sequence[Path], spec: dict[str, Any]) -> None:
        """Start the load of ``spec`` (see ``load.Load.start``) both ways on every path."""
        for path in paths:
            await self.ask(path.manager, "start", {"targets": [path.target], "spec": spec})
            await self.ask(path.agent, "start", {"targets": [None], "spec": spec})

    async def completed(self, paths: Sequence[Path]) -> list[int]:
        """The operations each node of ``paths`` completed so far (managers, agents)."""
        nodes = [node for path in paths for node in path.nodes]
        return list(await asyncio.gather(*(self.ask(node, "progress") for node in nodes)))

    async def progressed(
        self, paths: Sequence[Path], operations: int, timeout: float
    ) -> float | None:
        """Wait until every node completed ``operations`` more; the seconds it took.

        Returns:
            The seconds, or ``None`` when some node did not within ``timeout``.
        """
        started = time.monotonic()
        before = await self.completed(paths)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    now = await self.completed(paths)
                    if all(n >= b + operations for n, b in zip(now, before, strict=True)):
                        return time.monotonic() - started
                    await asyncio.sleep(POLL_INTERVAL)
        return None

    async def flap(self, host: str, seconds: float) -> None:
        """Take ``host``'s link down for ``seconds``, then up (also when cancelled)."""
        await self.bed.down(host)
        try:
            await asyncio.sleep(seconds)
        finally:
            await asyncio.shield(self.bed.up(host))

    async def stop(self, paths: Sequence[Path], drain: float) -> None:
        """Stop the load of every node of ``paths``; each drains for at most ``drain`` s."""
        nodes = [node for path in paths for node in path.nodes]
        await asyncio.gather(*(self.ask(node, "stop", {"drain": drain}, drain) for node in nodes))

    async def results(self, paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
        """Each path's verdict and counters, by label (after ``stop``).

        ``sessions_resumed`` is the resumptions of the path's hops: the agent's count (on a
        direct path the manager counts the same ones), plus the manager's on a relayed path
        (the upper hop's).
        """
        results = {}
        for path in paths:
            books = [await self.ask(node, "books") for node in path.nodes]
            counters = {}
            for role, node in zip(("manager", "agent"), path.nodes, strict=True):
                statistics = await self.ask(node, "statistics")
                counters[role] = {key: statistics[key] for key in COUNTERS}
            resumed = counters["agent"]["sessions_resumed"]
            if path.relayed:
                resumed += counters["manager"]["sessions_resumed"]
            results[path.label] = {
                "verdict": judge(books).as_dict(),
                "sessions_resumed": resumed,
                "counters": counters,
            }
        return results
