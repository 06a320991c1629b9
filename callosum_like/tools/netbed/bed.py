"""``NetBed``: hosts in network namespaces around a router, with knobs for bad networks.

Theory of operation: ``async with NetBed(("a", "b")) as bed`` first sweeps away the beds of
dead processes (``commands.sweep_stale``), then builds one namespace per host and one for the
router, a veth pair from the router to each host, addresses and routes from ``plan``, and
turns on forwarding in the router only. Leaving the block tears it all down (every process
left in the bed's namespaces is killed, the namespaces are deleted, the temporary directory
is removed), also when the block raised or was cancelled; a bed whose owner was killed is
removed by the next bed's sweep.

The knobs change the network while programs run in it; each takes effect when its awaitable
returns:

* ``loss(host, percent, direction=)``: nftables drops packets at random at the receiving end
  of the host's link (``in``: towards the host, ``out``: from it, ``both``: each way, each
  packet independently);
* ``bandwidth(host, bits_per_second)``: a token bucket (``tbf``) on both ends of the link;
* ``delay(ms)``: the one-way delay between any two hosts, made by ``forwarder`` in the router
  (started at the first call, it stays in the path for the TCP connections opened after it);
* ``down(host)`` / ``up(host)``: the router's end of the host's link goes down or up; the
  host sees its carrier go, nothing is reset, packets in either direction are lost;
* ``readdress(host)``: the host moves to the next address of its subnet.

Programs run in a host with ``argv(host, ...)`` (a command line for ``subprocess``) or
``spawn(host, label, ...)`` (a ``supervisor.ChildProcess``, whose ``READY`` line protocol the
tools' children speak). Only the tools and the tests import this module.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from ..supervisor import ChildProcess, python_path
from . import plan
from .commands import NetBedError, NetBedUnavailableError, run, sweep_stale, unavailable_reason
from .commands import remove_namespace as _remove_namespace
from .forwarder import DEFAULT_BUFFER_SIZE, parse_delay

__all__ = ["FORWARDER_READY_TIMEOUT", "NetBed"]

#: Seconds the delay forwarder gets to start and bind in the router.
FORWARDER_READY_TIMEOUT: Final = 20.0
_PERMISSION_WORDS: Final = ("operation not permitted", "permission denied")


class NetBed:
    """A throw-away network of hosts and a router, as an async context manager.

    Args:
        hosts: The hosts' names, 2 or more (see ``plan.check_hosts``).
        forwarder_buffer_size: Bytes the delay forwarder may hold per direction of each
            connection or UDP flow (``forwarder.DEFAULT_BUFFER_SIZE``): a TCP connection
            through it carries at most about this much per delay.

    Raises:
        ValueError: Bad host names, or a buffer size below 1.
    """

    def __init__(
        self,
        hosts: Sequence[str] = ("a", "b"),
        *,
        forwarder_buffer_size: int = DEFAULT_BUFFER_SIZE,
    ) -> None:
        self.hosts = tuple(hosts)
        plan.check_hosts(self.hosts)
        if forwarder_buffer_size < 1:
            raise ValueError(
                f"forwarder_buffer_size must be a positive number of bytes, "
                f"not {forwarder_buffer_size!r}"
            )
        self._buffer_size = forwarder_buffer_size
        pid = os.getpid()
        start = plan.process_start(pid)
        assert start is not None  # our own process
        #: This bed's name (its namespaces' common part is ``name.stem``).
        self.name = plan.BedName(pid=pid, start=start, token=secrets.token_hex(4))
        self._generation = dict.fromkeys(self.hosts, 0)
        self._directory: Path | None = None
        self._forwarder: ChildProcess | None = None

    # -- what the bed is made of ---------------------------------------------------------

    @property
    def router(self) -> str:
        """The router's namespace."""
        return self.name.namespace(plan.ROUTER)

    def namespace(self, host: str) -> str:
        """``host``'s namespace."""
        self._number(host)
        return self.name.namespace(host)

    def address(self, host: str) -> str:
        """The address ``host`` is reached at now."""
        return plan.host_address(self._number(host), self._generation[host])

    def argv(self, host: str, *command: str) -> list[str]:
        """The command line that runs ``command`` inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host), *command]

    def python(self, host: str, *args: str) -> list[str]:
        """The command line of ``python -u ARGS`` (this interpreter) inside ``host``."""
        return self.argv(host, sys.executable, "-u", *args)

    def spawn(self, host: str, label: str, *args: str, **options: Any) -> ChildProcess:
        """A ``ChildProcess`` running ``python -u ARGS`` inside ``host`` (not yet started).

        It imports this package from the same source tree; ``options`` go to
        ``ChildProcess`` (``relay``, ``stops_on_eof``, ``cpu``). Enter it with ``async with``.
        """
        env = {**os.environ, "PYTHONPATH": python_path()}
        return ChildProcess(label, self.python(host, *args), env=env, **options)

    # -- building and tearing down -------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._directory is not None:
            raise RuntimeError("a NetBed is entered only once: make a new one")
        reason = unavailable_reason()
        if reason is not None:
            raise NetBedUnavailableError(reason)
        await sweep_stale()
        self._directory = Path(tempfile.gettempdir()) / f"{self.name.stem}-tmp"
        self._directory.mkdir(mode=0o700)
        try:
            await self._build()
        except BaseException:
            await asyncio.shield(self._teardown())
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self._teardown())

    async def _build(self) -> None:
        try:
            await run("ip", "netns", "add", self.router)
        except NetBedError as exc:
            if any(word in exc.message.lower() for word in _PERMISSION_WORDS):
                raise NetBedUnavailableError(f"cannot create network namespaces: {exc}") from exc
            raise
        await run("ip", "-n", self.router, "link", "set", "lo", "up")
        await self._sysctl(self.router, "net/ipv4/ip_forward", "1")
        for host in self.hosts:
            await self._build_host(host)

    async def _build_host(self, host: str) -> None:
        namespace, near = self.name.namespace(host), plan.router_interface(host)
        number = self._number(host)
        await run("ip", "netns", "add", namespace)
        await run("ip", "-n", namespace, "link", "set", "lo", "up")
        await run(
            "ip", "-n", self.router, "link", "add", near,
            "type", "veth", "peer", "name", plan.HOST_INTERFACE, "netns", namespace,
        )  # fmt: skip
        await run("ip", "-n", self.router, "addr", "add", f"{plan.gateway(number)}/24", "dev", near)
        await run("ip", "-n", self.router, "link", "set", near, "up")
        await run("ip", "-n", namespace, "link", "set", plan.HOST_INTERFACE, "up")
        await self._address_host(host)

    async def _address_host(self, host: str) -> None:
        namespace, number = self.name.namespace(host), self._number(host)
        await run("ip", "-n", namespace, "addr", "flush", "dev", plan.HOST_INTERFACE)
        address = f"{self.address(host)}/24"
        await run("ip", "-n", namespace, "addr", "add", address, "dev", plan.HOST_INTERFACE)
        await run("ip", "-n", namespace, "route", "replace", "default", "via", plan.gateway(number))

    async def _teardown(self) -> None:
        """Remove everything, each part even when another failed; then raise the first error."""
        if self._forwarder is not None:
            forwarder, self._forwarder = self._forwarder, None
            await forwarder.__aexit__(None, None, None)
        errors = []
        for namespace in [*map(self.name.namespace, self.hosts), self.router]:
            try:
                await _remove_namespace(namespace)
            except NetBedError as exc:
                errors.append(exc)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)  # not None: never entered again
        if errors:
            raise errors[0]

    async def _sysctl(self, namespace: str, key: str, value: str) -> None:
        path = f"/proc/sys/{key}"
        await run("ip", "netns", "exec", namespace, "sh", "-c", f"echo {value} > {path}")

    def _router_end(self, host: str) -> str:
        self._number(host)
        return plan.router_interface(host)

    def _number(self, host: str) -> int:
        try:
            return self.hosts.index(host) + 1
        except ValueError:
            raise ValueError(f"host must be one of {self.hosts!r}, not {host!r}") from None

    # -- the knobs -----------------------------------------------------------------------

    async def loss(self, host: str, percent: float, *, direction: plan.Direction = "both") -> None:
        """Drop ``percent`` % of the packets on ``host``'s link, at random (0 stops it).

        Each packet is dropped independently, in each direction chosen: ``in`` (towards the
        host), ``out`` (from it) or ``both``; a direction not chosen is left as it was.
        Neither end is told: the packet vanishes on the wire. Resolution: 0.01 %.

        Raises:
            ValueError: ``percent`` outside 0..100, or an unknown host or direction.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within 0..100, not {percent!r}")
        if direction not in ("both", "in", "out"):
            raise ValueError(f"direction must be 'both', 'in' or 'out', not {direction!r}")
        where = {
            "in": (self.namespace(host), plan.HOST_INTERFACE),
            "out": (self.router, self._router_end(host)),
        }
        for side, (namespace, device) in where.items():
            if direction in ("both", side):
                script = plan.loss_ruleset(host, device, percent)
                await run("ip", "netns", "exec", namespace, "nft", "-f", "-", stdin=script)

    async def loss_counters(self, host: str) -> dict[str, list[int]]:
        """``{direction: [packets seen, packets dropped]}`` by ``host``'s loss rules so far.

        ``in`` is towards the host, ``out`` from it; a direction without loss is left out.
        With segmentation offloads on, one "packet" may be a 64 KiB super-segment.

        Raises:
            ValueError: An unknown host.
        """
        where = {
            "in": self.namespace(host),
            "out": self.router,
        }
        self._router_end(host)
        counters: dict[str, list[int]] = {}
        for side, namespace in where.items():
            try:
                listing = await run("ip", "netns", "exec", namespace, "nft", "-j", "list",
                                    "table", "netdev", plan.loss_table(host))  # fmt: skip
            except NetBedError:
                continue  # no loss in that direction
            found = [
                item["counter"]["packets"]
                for rule in json.loads(listing)["nftables"]
                if "rule" in rule
                for item in rule["rule"]["expr"]
                if "counter" in item
            ]
            if len(found) == 2:
                counters[side] = found
        return counters

    async def offloads(self, host: str, enabled: bool) -> None:
        """Turn segmentation offloads (TSO, GSO, GRO) on ``host``'s link on or off.

        With them on (the kernel's default), TCP crosses a veth link in super-segments of up
        to 64 KiB, and ``loss`` drops a whole one at a time: far fewer losses for TCP than
        for the same percentage of single packets. Off, every packet is one wire-sized
        segment and is dropped on its own. Needs ``ethtool``.

        Raises:
            ValueError: An unknown host.
            NetBedError: ``ethtool`` is missing or refused.
        """
        if shutil.which("ethtool") is None:
            raise NetBedError("offloads() needs ethtool (apt-get install ethtool)")
        state = "on" if enabled else "off"
        ends = [
            (self.namespace(host), plan.HOST_INTERFACE),
            (self.router, self._router_end(host)),
        ]
        for namespace, device in ends:
            await run("ip", "netns", "exec", namespace, "ethtool", "-K", device,
                      "tso", state, "gso", state, "gro", state)  # fmt: skip

    async def bandwidth(self, host: str, bits_per_second: int | None) -> None:
        """Cap ``host``'s link at ``bits_per_second`` in each direction (``None`` lifts it).

        Raises:
            ValueError: A rate below 8000 bit/s, or an unknown host.
        """
        if bits_per_second is not None and bits_per_second < 8000:
            raise ValueError(f"bits_per_second must be at least 8000, not {bits_per_second!r}")
        ends = [
            (self.namespace(host), plan.HOST_INTERFACE),
            (self.router, self._router_end(host)),
        ]
        for namespace, device in ends:
            if bits_per_second is None:
                await run("ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", device,
                          "root")  # fmt: skip
            else:
                qdisc = plan.tbf_arguments(bits_per_second)
                await run("ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev",
                          device, *qdisc)  # fmt: skip

    async def delay(self, ms: float) -> None:
        """Delay each TCP chunk and UDP datagram between two hosts by ``ms`` one way.

        The first call starts the forwarder in the router: from then on, TCP connections
        *opened* between hosts, and all UDP between hosts, pass through it (connections
        open before go on directly, undelayed); later calls change the delay for what
        arrives after them. ``delay(0)`` keeps the forwarder in the path with no delay.
        ICMP and traffic to the router itself are never delayed.

        Raises:
            ValueError: ``ms`` outside 0..``forwarder.MAX_DELAY_MS``.
            NetBedError: The forwarder could not start or refused the command.
        """
        parse_delay(str(ms))
        if self._forwarder is None:
            await self._start_forwarder()
        answer = await self._control(f"delay {ms}")
        if not answer.startswith("ok "):
            raise NetBedError(f"the forwarder refused delay {ms}: {answer}")

    async def forwarder_statistics(self) -> dict[str, Any]:
        """The forwarder's counters (see ``forwarder``'s docstring for the keys).

        Raises:
            NetBedError: No ``delay`` was set yet, so there is no forwarder.
        """
        if self._forwarder is None:
            raise NetBedError("no forwarder runs: call delay() first")
        result: dict[str, Any] = json.loads(await self._control("stats"))
        return result

    async def down(self, host: str) -> None:
        """Take ``host``'s link down at the router: its packets are lost until ``up``.

        Raises:
            ValueError: An unknown host.
        """
        await run("ip", "-n", self.router, "link", "set", self._router_end(host), "down")

    async def up(self, host: str) -> None:
        """Bring ``host``'s link back up (undoes ``down``).

        Raises:
            ValueError: An unknown host.
        """
        await run("ip", "-n", self.router, "link", "set", self._router_end(host), "up")

    async def readdress(self, host: str) -> str:
        """Move ``host`` to the next address of its subnet, and return that address.

        The old address is gone at once: connections bound to it stall, as after a real
        address change; the host's default route is restored.

        Raises:
            ValueError: An unknown host, or its subnet has no address left.
        """
        number = self._number(host)
        plan.host_address(number, self._generation[host] + 1)  # raises when none is left
        self._generation[host] += 1
        await self._address_host(host)
        return self.address(host)

    # -- the forwarder -------------------------------------------------------------------

    def _control_path(self) -> Path:
        assert self._directory is not None
        return self._directory / "forwarder.sock"

    async def _start_forwarder(self) -> None:
        module = "callosum_like.tools.netbed.forwarder"
        argv = ["ip", "netns", "exec", self.router, sys.executable, "-u", "-m", module]
        argv += ["--control", str(self._control_path()), "--buffer-size", str(self._buffer_size)]
        env = {**os.environ, "PYTHONPATH": python_path()}
        self._forwarder = ChildProcess("forwarder", argv, relay=False, env=env)
        await self._forwarder.__aenter__()
        try:
            ready = await self._forwarder.ready(FORWARDER_READY_TIMEOUT)
        except (TimeoutError, RuntimeError) as exc:
            raise NetBedError(
                f"the delay forwarder did not start: {self._forwarder.tail()}"
            ) from exc
        ports = dict(item.split("=") for item in ready.split())
        await run("ip", "-n", self.router, "rule", "add", "fwmark", str(plan.FORWARD_MARK),
                  "lookup", str(plan.FORWARD_TABLE))  # fmt: skip
        await run("ip", "-n", self.router, "route", "add", "local", "0.0.0.0/0", "dev", "lo",
                  "table", str(plan.FORWARD_TABLE))  # fmt: skip
        script = plan.divert_ruleset(int(ports["tcp"]), int(ports["udp"]))
        await run("ip", "netns", "exec", self.router, "nft", "-f", "-", stdin=script)

    async def _control(self, command: str) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self._control_path()))
        try:
            writer.write(f"{command}\n".encode())
            await writer.drain()
            async with asyncio.timeout(FORWARDER_READY_TIMEOUT):
                return (await reader.readline()).decode().strip()
        finally:
            writer.close()
            await writer.wait_closed()
