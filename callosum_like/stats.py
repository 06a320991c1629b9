"""Counters of a Peer and the frozen snapshot that ``Peer.statistics()`` returns.

Theory of operation: ``Counters`` is a plain mutable record that the Peer bumps on its hot
paths (attribute increments only, no locks: everything runs on one event loop).
``snapshot()`` copies it into ``PeerStatistics``, a frozen dataclass, so what a user holds
never changes under them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["PeerStatistics", "Counters"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStatistics:
    """A snapshot of a Peer's counters.

    Attributes:
        calls_out: Calls this peer sent.
        calls_in: Calls this peer received.
        calls_in_flight: Calls this peer sent that await their reply.
        requests_in_flight: Calls received that are running or waiting to run.
        errors: Failed outgoing calls by error class name (``"RPCUserError"``,
            ``"timeout"``, ``"PeerDisconnectedError"``, ...).
        bytes_out: Bytes of frames sent.
        bytes_in: Bytes of frames received.
        dropped_messages: Messages dropped as garbage, unexpected or oversized.
        connected_peers: Remotes with a completed handshake.
    """

    calls_out: int
    calls_in: int
    calls_in_flight: int
    requests_in_flight: int
    errors: Mapping[str, int]
    bytes_out: int
    bytes_in: int
    dropped_messages: int
    connected_peers: int


@dataclass(slots=True)
class Counters:
    """The mutable counters behind ``PeerStatistics``."""

    calls_out: int = 0
    calls_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    dropped_messages: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        """Count one failed outgoing call of ``kind``."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def snapshot(
        self,
        *,
        calls_in_flight: int,
        requests_in_flight: int,
        connected_peers: int,
        transport_dropped: int = 0,
    ) -> PeerStatistics:
        """Freeze the counters, with the gauges the Peer measures at this moment.

        ``transport_dropped`` is what the transport dropped before the Peer saw it.
        """
        return PeerStatistics(
            calls_out=self.calls_out,
            calls_in=self.calls_in,
            calls_in_flight=calls_in_flight,
            requests_in_flight=requests_in_flight,
            errors=MappingProxyType(dict(self.errors)),
            bytes_out=self.bytes_out,
            bytes_in=self.bytes_in,
            dropped_messages=self.dropped_messages + transport_dropped,
            connected_peers=connected_peers,
        )
