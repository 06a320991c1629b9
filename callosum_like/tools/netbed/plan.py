"""The bed's plan on paper: names, addresses and rulesets, with no I/O.

Theory of operation: everything ``bed.NetBed`` asks of ``ip``, ``tc`` and ``nft`` that can be
decided without the system is decided here, so it can be tested without root.

*Names.* A bed's namespaces are called ``clnb-PID-START-TOKEN-ROLE``: ``PID`` and ``START``
(the process's start time in clock ticks since boot, from ``/proc/PID/stat``) name the process
that made the bed, so a bed whose owner is gone is recognised as stale even when its pid has
been reused (``owner_alive``); ``TOKEN`` tells apart the beds of one process; ``ROLE`` is
``router`` or a host's name. Interfaces live inside the namespaces, where their names cannot
collide with anyone else's: ``to-HOST`` on the router, ``eth0`` on each host.

*Addresses.* Host number ``i`` (from 1, in the order given) sits on ``10.77.i.0/24``: the router
is ``.1`` and the host starts at ``.2``; each ``readdress`` moves it one up. These addresses
exist only inside the bed's namespaces, which have no route to anything else.

*Rulesets.* ``loss_ruleset`` drops at random with nftables' ``numgen`` at the ingress of one
interface (so the drop is a real one on the wire, which neither sender nor receiver is told
about); ``divert_ruleset`` sends new TCP connections and all UDP between hosts to the delay
forwarder (TPROXY), and the packets of the forwarder's own sockets back to it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = [
    "PREFIX",
    "ROUTER",
    "HOST_INTERFACE",
    "FORWARD_MARK",
    "FORWARD_TABLE",
    "MAX_HOSTS",
    "BedName",
    "process_start",
    "owner_alive",
    "check_hosts",
    "router_interface",
    "subnet",
    "gateway",
    "host_address",
    "Direction",
    "loss_table",
    "loss_ruleset",
    "DELAY_TABLE",
    "divert_ruleset",
    "tbf_arguments",
]

#: The first part of every namespace (and temporary directory) a bed makes.
PREFIX: Final = "clnb"
#: The role of the router namespace.
ROUTER: Final = "router"
#: A host's one interface (towards the router), inside its namespace.
HOST_INTERFACE: Final = "eth0"
#: The packet mark and routing table that deliver diverted packets to the forwarder.
FORWARD_MARK: Final = 1
FORWARD_TABLE: Final = 100
#: Hosts a bed may have (each gets a /24 of 10.77.0.0/16).
MAX_HOSTS: Final = 250
#: The nftables table of the forwarder's diversion, in the router.
DELAY_TABLE: Final = "netbed_delay"

_HOST_NAME: Final = re.compile(r"[a-z][a-z0-9]{0,7}")
_NAMESPACE: Final = re.compile(rf"{PREFIX}-(\d+)-(\d+)-([0-9a-f]+)-([a-z][a-z0-9]*)")
_NETWORK: Final = ipaddress.IPv4Network("10.77.0.0/16")
_PROC: Final = Path("/proc")

Direction = Literal["both", "in", "out"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BedName:
    """The name of one bed: its owner process and a token (see the module's docstring)."""

    pid: int
    start: int
    token: str

    @property
    def stem(self) -> str:
        """The common part of the bed's namespace names: ``clnb-PID-START-TOKEN``."""
        return f"{PREFIX}-{self.pid}-{self.start}-{self.token}"

    def namespace(self, role: str) -> str:
        """The namespace of ``role`` (``ROUTER`` or a host's name)."""
        return f"{self.stem}-{role}"

    @classmethod
    def parse(cls, namespace: str) -> tuple[BedName, str] | None:
        """The bed and role a namespace name belongs to; ``None`` if it is not a bed's."""
        match = _NAMESPACE.fullmatch(namespace)
        if match is None:
            return None
        pid, start, token, role = match.groups()
        return cls(pid=int(pid), start=int(start), token=token), role


def process_start(pid: int, proc: Path = _PROC) -> int | None:
    """Process ``pid``'s start time (clock ticks since boot), or ``None`` if it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_alive(name: BedName, proc: Path = _PROC) -> bool:
    """Whether the process that made bed ``name`` still runs (the same one, not a reuse)."""
    return process_start(name.pid, proc) == name.start


def check_hosts(hosts: tuple[str, ...]) -> None:
    """Validate a bed's host names.

    Raises:
        ValueError: Fewer than two, more than ``MAX_HOSTS``, a repeat, or a name that is
            not 1 to 8 lowercase letters and digits starting with a letter, or is ``router``.
    """
    if not 2 <= len(hosts) <= MAX_HOSTS:
        raise ValueError(f"hosts must name 2 to {MAX_HOSTS} hosts, not {len(hosts)}")
    if len(set(hosts)) != len(hosts):
        raise ValueError(f"hosts must be distinct: {hosts!r}")
    for host in hosts:
        if not _HOST_NAME.fullmatch(host) or host == ROUTER:
            raise ValueError(
                f"host name {host!r} must be 1-8 lowercase letters or digits, starting with a "
                f"letter, and not {ROUTER!r}"
            )


def router_interface(host: str) -> str:
    """The router's interface towards ``host``."""
    return f"to-{host}"


def subnet(number: int) -> ipaddress.IPv4Network:
    """The /24 of host number ``number`` (from 1)."""
    return ipaddress.IPv4Network((int(_NETWORK.network_address) + (number << 8), 24))


def gateway(number: int) -> str:
    """The router's address on host number ``number``'s subnet."""
    return str(subnet(number).network_address + 1)


def host_address(number: int, generation: int) -> str:
    """Host number ``number``'s address after ``generation`` readdresses.

    Raises:
        ValueError: The subnet has no address left for that generation.
    """
    if not 0 <= generation <= 251:
        raise ValueError(f"no address left on {subnet(number)} for generation {generation}")
    return str(subnet(number).network_address + 2 + generation)


def loss_table(host: str) -> str:
    """The name of the nftables table that makes ``host``'s loss in one direction."""
    return f"netbed_loss_{host}"


def loss_ruleset(host: str, device: str, percent: float) -> str:
    """An ``nft -f`` script that makes ``device`` drop ``percent`` % of what it receives.

    It replaces the table of an earlier call; at 0 % it only removes it. The drop rate is
    set in steps of 0.01 %. Two counters: every packet the rule sees, and those it drops.
    """
    table = loss_table(host)
    script = f"table netdev {table}\ndelete table netdev {table}\n"
    threshold = round(percent * 100)
    if threshold:
        script += (
            f"table netdev {table} {{\n"
            f'  chain lose {{ type filter hook ingress device "{device}" priority 0; '
            f"policy accept; counter; numgen random mod 10000 < {threshold} counter drop; }}\n"
            "}\n"
        )
    return script


def divert_ruleset(tcp_port: int, udp_port: int) -> str:
    """The router's ``nft -f`` script that sends host-to-host TCP and UDP to the forwarder.

    Only TCP connections *opened* after it is loaded are diverted (their SYN); the rest of a
    diverted connection, and the answers to the forwarder's own transparent sockets, are
    found by the ``socket transparent`` match. Connections that were open before go on
    directly. Traffic to the router itself is left alone.
    """
    return (
        f"table ip {DELAY_TABLE} {{\n"
        "  chain divert {\n"
        "    type filter hook prerouting priority mangle; policy accept;\n"
        f'    iifname != "{router_interface("*")}" accept\n'
        "    fib daddr type local accept\n"
        "    meta l4proto { tcp, udp } socket transparent 1 "
        f"meta mark set {FORWARD_MARK} accept\n"
        f"    tcp flags & (syn | ack) == syn tproxy to :{tcp_port} "
        f"meta mark set {FORWARD_MARK} accept\n"
        f"    meta l4proto udp tproxy to :{udp_port} meta mark set {FORWARD_MARK} accept\n"
        "  }\n"
        "}\n"
    )


def tbf_arguments(bits_per_second: int) -> list[str]:
    """``tc qdisc replace`` arguments after ``dev DEVICE`` for a token bucket at that rate.

    The bucket holds 10 ms of the rate, and at least 16 kB (so full-size and segmented
    packets pass); packets that would wait more than 50 ms are dropped, as a shallow router
    queue would drop them.
    """
    burst = max(bits_per_second // 8 // 100, 16_000)
    return ["root", "tbf", "rate", f"{bits_per_second}bit", "burst", str(burst), "latency", "50ms"]
