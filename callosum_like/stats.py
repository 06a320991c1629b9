"""Counters of a Peer and the frozen snapshot that ``Peer.statistics()`` returns.

Theory of operation: ``Counters`` is a plain mutable record that the Peer and its dispatcher
bump on their hot paths (attribute increments only, no locks: everything runs on one event
loop). ``snapshot()`` copies it into ``PeerStatistics``, a frozen dataclass, together with
the gauges the Peer measures at that moment (calls in flight, requests running and queued,
connected peers), so what a user holds never changes under them.

Counters only grow; gauges go up and down. Everything counts from the peer's creation.

Dropped messages: each is logged exactly once, as ``dropped a message: <reason>``, at WARNING
for the first ``DROP_WARNINGS_PER_SECOND`` in a second and at DEBUG for the rest of the
burst (``DropLog``); the next WARNING after a burst says how many went to DEBUG.

The RPC log: every call this process makes or serves is logged to the ``callosum_like.rpc``
logger at DEBUG (method, remote, milliseconds, outcome), *only* when that logger is enabled
for DEBUG. ``rpc_started()`` returns ``None`` otherwise, so a disabled log costs one cached
level check per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, NoReturn

__all__ = [
    "PeerStatistics",
    "CountsByName",
    "Counters",
    "Gauges",
    "DropLog",
    "rpc_log",
    "rpc_started",
    "log_rpc",
    "DROP_WARNINGS_PER_SECOND",
]

#: Dropped messages logged at WARNING per second and logger; the rest of a burst goes to
#: DEBUG, so that a flood of garbage cannot flood the log as well.
DROP_WARNINGS_PER_SECOND: Final = 10

#: The logger of the per-RPC debug log (see the module doc and docs/guide.md).
rpc_log = logging.getLogger("callosum_like.rpc")


def rpc_started() -> float | None:
    """The start time of an RPC to log, or ``None`` when the RPC log is off."""
    return time.perf_counter() if rpc_log.isEnabledFor(logging.DEBUG) else None


def log_rpc(direction: str, method: str, remote: str, started: float, outcome: str) -> None:
    """Log one finished RPC: ``direction`` is ``"invoked"`` (ours) or ``"served"`` (theirs).

    ``outcome`` is ``"ok"`` or the name of the error the caller got. The fields are also
    attached to the record (``rpc_direction``, ``rpc_method``, ``rpc_remote``, ``rpc_ms``,
    ``rpc_outcome``) for structured handlers.
    """
    elapsed = (time.perf_counter() - started) * 1000
    preposition = "on" if direction == "invoked" else "for"
    rpc_log.debug(
        "%s %s %s %r in %.3f ms: %s",
        direction,
        method,
        preposition,
        remote,
        elapsed,
        outcome,
        extra={
            "rpc_direction": direction,
            "rpc_method": method,
            "rpc_remote": remote,
            "rpc_ms": elapsed,
            "rpc_outcome": outcome,
        },
    )


class CountsByName(dict[str, int]):
    """A read-only ``dict`` of counts by name, as ``PeerStatistics`` holds them.

    A ``dict`` so that ``dataclasses.asdict``, ``json.dumps``, ``copy`` and ``pickle`` take
    it as they take any dict (a ``MappingProxyType`` defeats all four); read-only so that a
    snapshot never changes under whoever holds it. Every mutating method raises
    ``TypeError``.
    """

    __slots__ = ()

    def __init__(self, counts: Mapping[str, int] | Iterable[tuple[str, int]] = ()) -> None:
        super().__init__(counts)

    def __reduce__(self) -> tuple[type[CountsByName], tuple[dict[str, int]]]:
        return type(self), (dict(self),)

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("statistics are a snapshot: their counts are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerStatistics:
    """A snapshot of a Peer's counters and gauges.

    ``dataclasses.asdict(stats)`` is plain data (ints, and dicts of counts by name) that
    ``json.dumps`` writes as it is, for exporting to metrics; a snapshot also copies and
    pickles. Its count mappings are read-only.

    Attributes:
        calls_out: Calls (and streams) this peer sent.
        calls_in: Calls (and streams) this peer received.
        calls_in_flight: Calls this peer sent that await their reply (gauge).
        requests_in_flight: Calls received and not answered yet: running plus queued (gauge).
        requests_running: Handlers running now, at most ``max_concurrency`` (gauge).
        requests_queued: Calls received that wait for a ``max_concurrency`` slot or for
            the call before them of their order key (gauge).
        requests_refused: Calls received and answered with ``OverloadedError``: refused at
            once (``max_pending`` were held, and the caller's link had its fair share of
            them), or pushed out before they started to make room for a caller under its
            share (those are also counted in ``requests_pushed_out``).
        requests_pushed_out: Of ``requests_refused``, the calls first admitted, then pushed
            out before they started (see docs/guide.md, "Fairness between remotes").
        errors: Failed outgoing calls by error class name (``"RPCUserError"``,
            ``"RPCTimeoutError"``, ``"PeerDisconnectedError"``, ``"CancelledError"``, ...).
        request_errors: Calls received that were answered with an error, by the error class
            name their caller gets (``"RPCUserError"`` for a handler that raised,
            ``"MethodNotFoundError"``, ``"OverloadedError"``, ``"RPCCancelledError"``, ...).
        bytes_out: Bytes of frames sent.
        bytes_in: Bytes of frames received.
        dropped_messages: Messages dropped as garbage, unexpected or oversized, by this peer
            or by its transport (each one also logged once at WARNING).
        connected_peers: Remotes with a completed handshake (gauge).
        reconnects: Times a connecting peer completed a handshake again after losing its link.
        disconnects: Links with a completed handshake that ended while this peer was open
            (the remote closed, went silent, broke its connection, was replaced, ...).
        slow_remotes_dropped: Remotes dropped because they did not read what was sent to them
            (their unread output passed the transport's limit; see docs/reliability.md).
        links_refused: Links a bound peer turned away before or during their handshake: a
            Hello with a bad identity or another identity's reconnect token, or a half-open
            connection pushed out by newer ones (``remotes.MAX_HANDSHAKES``).
        sessions_resumed: Resumable sessions carried on over a new connection after their
            connection was lost (``resume_timeout``).
        resumes_refused: Resumptions refused: an unknown, expired or ended session, one of
            another peer, or a count of messages that is not the session's.
    """

    calls_out: int
    calls_in: int
    calls_in_flight: int
    requests_in_flight: int
    requests_running: int
    requests_queued: int
    requests_refused: int
    requests_pushed_out: int
    errors: Mapping[str, int]
    request_errors: Mapping[str, int]
    bytes_out: int
    bytes_in: int
    dropped_messages: int
    connected_peers: int
    reconnects: int
    disconnects: int
    slow_remotes_dropped: int
    links_refused: int
    sessions_resumed: int
    resumes_refused: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Gauges:
    """What the Peer measures at the moment of a snapshot."""

    calls_in_flight: int
    requests_running: int
    requests_queued: int
    connected_peers: int
    transport_dropped: int = 0


@dataclass(slots=True)
class Counters:
    """The mutable counters behind ``PeerStatistics``."""

    calls_out: int = 0
    calls_in: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    dropped_messages: int = 0
    requests_refused: int = 0
    requests_pushed_out: int = 0
    reconnects: int = 0
    disconnects: int = 0
    slow_remotes_dropped: int = 0
    links_refused: int = 0
    sessions_resumed: int = 0
    resumes_refused: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    request_errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, kind: str) -> None:
        """Count one failed outgoing call of ``kind``."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def count_request_error(self, kind: str) -> None:
        """Count one received call answered with the error ``kind``."""
        self.request_errors[kind] = self.request_errors.get(kind, 0) + 1

    def snapshot(self, gauges: Gauges) -> PeerStatistics:
        """Freeze the counters, with the gauges the Peer measured at this moment."""
        return PeerStatistics(
            calls_out=self.calls_out,
            calls_in=self.calls_in,
            calls_in_flight=gauges.calls_in_flight,
            requests_in_flight=gauges.requests_running + gauges.requests_queued,
            requests_running=gauges.requests_running,
            requests_queued=gauges.requests_queued,
            requests_refused=self.requests_refused,
            requests_pushed_out=self.requests_pushed_out,
            errors=CountsByName(self.errors),
            request_errors=CountsByName(self.request_errors),
            bytes_out=self.bytes_out,
            bytes_in=self.bytes_in,
            dropped_messages=self.dropped_messages + gauges.transport_dropped,
            connected_peers=gauges.connected_peers,
            reconnects=self.reconnects,
            disconnects=self.disconnects,
            slow_remotes_dropped=self.slow_remotes_dropped,
            links_refused=self.links_refused,
            sessions_resumed=self.sessions_resumed,
            resumes_refused=self.resumes_refused,
        )


class DropLog:
    """Logs each dropped message once, rate-limiting the WARNINGs (see the module doc).

    Args:
        logger: Where the records go (the dropping module's logger).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._window = -1.0
        self._warned = 0
        self._quiet = 0

    def dropped(self, reason: str) -> None:
        """Log one dropped message."""
        now = time.monotonic()
        if now - self._window >= 1.0:
            if self._quiet:
                self._log.warning(
                    "%d more messages were dropped in a burst (logged at DEBUG)", self._quiet
                )
            self._window, self._warned, self._quiet = now, 0, 0
        if self._warned < DROP_WARNINGS_PER_SECOND:
            self._warned += 1
            self._log.warning("dropped a message: %s", reason)
        else:
            self._quiet += 1
            self._log.debug("dropped a message: %s", reason)
