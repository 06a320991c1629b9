r"""Sans-IO state of one link (one remote peer): link states, call states, heartbeats.

Theory of operation: the Peer keeps one ``Session`` per remote. A session owns no tasks,
sockets or futures; the Peer feeds it what happened (a decoded message, a call it sent, the
clock as ``now``) and it answers what that means, so every rule here is tested without a
loop or a sleep.

Rule 1 — link states are a table. ``LINK_TRANSITIONS`` maps ``(state, input)`` to the next
state; anything missing raises ``ProtocolError`` (h2's state machine style)::

    CONNECTING --WELCOME/HELLO--> OPEN --CLOSE--> CLOSING --CLOSED--> CLOSED
         \\                         |  \\--GOODBYE/LOST/EXPIRE--> BROKEN
          \\--CLOSE/LOST/EXPIRE/     SUSPEND  ^ RESUME
             GOODBYE--> CLOSED/BROKEN  v  |
                                   SUSPENDED --EXPIRE/LOST--> BROKEN, --CLOSE--> CLOSED

A resumable link (``Peer(resume_timeout=...)``, docs/PROTOCOL.md "Resumption") whose
connection is lost is SUSPENDED instead of BROKEN: its calls and handlers carry on, what it
sends is kept, and a resumption on a new connection opens it again; ``resume_timeout``
without one (EXPIRE), or a resumption refused (LOST), ends it.

The Peer acts on what the table answers, not beside it: a link ends (its calls fail with
``PeerDisconnectedError``, the transport drops it) exactly when an input takes it to BROKEN;
its close sends a Goodbye to the links that CLOSE takes to CLOSING, and ends each with CLOSED.

Rule 2 — which messages a state accepts is a table too (``ACCEPTS``): before the handshake
only the handshake message; after it everything but the handshake.

Rule 3 — every call we send is answered exactly once (Result, Failure, Error or Cancelled),
unless the link dies. ``CALL_TRANSITIONS`` tracks ``SENT -> CANCELLING -> DONE``; a call the
caller abandoned stays ``CANCELLING`` until the remote's answer arrives, so a late reply is
recognised and discarded instead of being mistaken for garbage.

Rule 4 — liveness: every message heard refreshes the link. A ``Ping`` is due every
``heartbeat_interval`` (on the bound side only while the remote is quiet: a connecting side
pings every interval, and its pings are answered, so an idle link costs the bound side one
message in and one out per interval); the link is expired once nothing was heard for
``heartbeat_timeout``.
"""

from __future__ import annotations

import enum
import itertools
from typing import Final

from .errors import ProtocolError
from .wire import messages as m

__all__ = [
    "LinkState",
    "LinkInput",
    "CallState",
    "CallInput",
    "LINK_TRANSITIONS",
    "CALL_TRANSITIONS",
    "ACCEPTS",
    "Session",
]


class _Enum(enum.Enum):
    """An enum whose members hash by identity, in C.

    ``Enum.__hash__`` is a Python function (hash of the name); these members are looked up
    in the transition tables several times per call. Members are singletons compared by
    identity, so hashing by identity is consistent with equality.
    """

    __hash__ = object.__hash__


class LinkState(_Enum):
    """Where a link is in its life."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    BROKEN = "broken"
    SUSPENDED = "suspended"  # a resumable link without a connection, kept for resumption


class LinkInput(_Enum):
    """What can happen to a link."""

    HANDSHAKE = "handshake"  # Hello (bound side) or Welcome (connecting side) accepted
    CLOSE = "close"  # we close on purpose
    CLOSED = "closed"  # our close finished
    GOODBYE = "goodbye"  # the remote closed on purpose
    LOST = "lost"  # the transport reported the connection gone
    EXPIRE = "expire"  # heartbeat timeout (or, for a suspended link, resume timeout)
    SUSPEND = "suspend"  # a resumable link lost its connection; its session is kept
    RESUME = "resume"  # the session was resumed on a new connection


_S, _I = LinkState, LinkInput
LINK_TRANSITIONS: Final[dict[tuple[LinkState, LinkInput], LinkState]] = {
    (_S.CONNECTING, _I.HANDSHAKE): _S.OPEN,
    (_S.CONNECTING, _I.CLOSE): _S.CLOSED,
    (_S.CONNECTING, _I.GOODBYE): _S.BROKEN,
    (_S.CONNECTING, _I.LOST): _S.BROKEN,
    (_S.CONNECTING, _I.EXPIRE): _S.BROKEN,
    (_S.OPEN, _I.CLOSE): _S.CLOSING,
    (_S.OPEN, _I.GOODBYE): _S.BROKEN,
    (_S.OPEN, _I.LOST): _S.BROKEN,
    (_S.OPEN, _I.EXPIRE): _S.BROKEN,
    (_S.OPEN, _I.SUSPEND): _S.SUSPENDED,
    (_S.SUSPENDED, _I.RESUME): _S.OPEN,
    (_S.SUSPENDED, _I.EXPIRE): _S.BROKEN,
    (_S.SUSPENDED, _I.LOST): _S.BROKEN,
    (_S.SUSPENDED, _I.CLOSE): _S.CLOSED,
    (_S.CLOSING, _I.CLOSED): _S.CLOSED,
    (_S.CLOSING, _I.GOODBYE): _S.CLOSING,
    (_S.CLOSING, _I.LOST): _S.CLOSING,
    (_S.CLOSING, _I.EXPIRE): _S.CLOSING,
}


class CallState(_Enum):
    """Where one call we sent is."""

    SENT = "sent"
    CANCELLING = "cancelling"
    DONE = "done"


class CallInput(_Enum):
    """What can happen to a call we sent."""

    REPLY = "reply"  # Result, Failure, Error or Cancelled arrived
    ABANDON = "abandon"  # our caller timed out or was cancelled; we sent Cancel


CALL_TRANSITIONS: Final[dict[tuple[CallState, CallInput], CallState]] = {
    (CallState.SENT, CallInput.REPLY): CallState.DONE,
    (CallState.SENT, CallInput.ABANDON): CallState.CANCELLING,
    (CallState.CANCELLING, CallInput.REPLY): CallState.DONE,
}

_HANDSHAKE = frozenset(cls.KIND for cls in m.kinds_with(m.Trait.HANDSHAKE))
_TRAFFIC = frozenset(m.MessageKind) - _HANDSHAKE
#: Which message kinds each link state accepts from the remote.
ACCEPTS: Final[dict[LinkState, frozenset[m.MessageKind]]] = {
    LinkState.CONNECTING: _HANDSHAKE | {m.MessageKind.GOODBYE},
    LinkState.OPEN: _TRAFFIC,
    LinkState.CLOSING: _TRAFFIC,
    LinkState.CLOSED: frozenset(),
    LinkState.BROKEN: frozenset(),
    LinkState.SUSPENDED: frozenset(),  # it has no connection to receive on
}


class Session:
    """The state of one link.

    Args:
        heartbeat_interval: Seconds between pings.
        heartbeat_timeout: Seconds of silence after which the link is expired.
        now: The current time, in seconds of a monotonic clock.
    """

    def __init__(self, *, heartbeat_interval: float, heartbeat_timeout: float, now: float) -> None:
        self.state = LinkState.CONNECTING
        self.remote_identity = ""
        self.remote_max_body_size = 0
        self._interval = heartbeat_interval
        self._timeout = heartbeat_timeout
        self._heard = now
        self._pinged = now
        self._ids = itertools.count(1)
        self._calls: dict[int, CallState] = {}

    # -- link ---------------------------------------------------------------------------------

    def transition(self, event: LinkInput) -> LinkState:
        """Apply ``event``; return the new state.

        Raises:
            ProtocolError: ``event`` is not allowed in the current state.
        """
        try:
            self.state = LINK_TRANSITIONS[self.state, event]
        except KeyError:
            raise ProtocolError(
                f"{event.value} not allowed in link state {self.state.value}"
            ) from None
        return self.state

    def receive(self, msg: m.Message, now: float) -> None:
        """Check that the link accepts ``msg`` now, and count it as a sign of life.

        Raises:
            ProtocolError: The link does not accept this kind of message in its state.
        """
        if msg.KIND not in ACCEPTS[self.state]:
            raise ProtocolError(
                f"{type(msg).__name__} not allowed in link state {self.state.value}"
            )
        self._heard = now

    def resume(self, now: float) -> None:
        """The session was resumed on a new connection: open, and alive as of ``now``."""
        self.transition(LinkInput.RESUME)
        self._heard = self._pinged = now

    def handshake(self, identity: str, max_body_size: int) -> None:
        """Record what the remote announced in Hello or Welcome, and open the link."""
        self.transition(LinkInput.HANDSHAKE)
        self.remote_identity = identity
        self.remote_max_body_size = max_body_size

    @property
    def is_open(self) -> bool:
        """Whether calls may be sent on this link."""
        return self.state is LinkState.OPEN

    # -- heartbeat ----------------------------------------------------------------------------

    def ping_due(self, now: float, *, quiet: float = 0.0) -> bool:
        """Whether a Ping should go out now; if so, it is recorded as sent.

        Args:
            now: The current time.
            quiet: Ping only a remote silent for this many seconds too (the bound side: its
                remotes ping it, and their pings need no ping back).
        """
        if now - self._pinged < self._interval:
            return False
        if now - self._heard < quiet:
            return False
        self._pinged = now
        return True

    @property
    def heard(self) -> float:
        """When the remote was last heard from (a message accepted, or the link opened)."""
        return self._heard

    def expired(self, now: float) -> bool:
        """Whether nothing was heard for ``heartbeat_timeout`` seconds."""
        return now - self._heard >= self._timeout

    # -- calls --------------------------------------------------------------------------------

    def start_call(self) -> int:
        """Allocate the id of a new outgoing call and track it as ``SENT``."""
        call_id = next(self._ids)
        self._calls[call_id] = CallState.SENT
        return call_id

    def call_input(self, call_id: int, event: CallInput) -> CallState | None:
        """Apply ``event`` to call ``call_id``; return its new state, or ``None`` if unknown.

        A call that reaches ``DONE`` is forgotten.

        Raises:
            ProtocolError: ``event`` is not allowed for the call's state.
        """
        state = self._calls.get(call_id)
        if state is None:
            return None
        try:
            new = CALL_TRANSITIONS[state, event]
        except KeyError:
            raise ProtocolError(
                f"{event.value} not allowed for call in state {state.value}"
            ) from None
        if new is CallState.DONE:
            del self._calls[call_id]
        else:
            self._calls[call_id] = new
        return new

    def forget_calls(self) -> list[int]:
        """The link ended: return the ids of all calls still tracked, and drop them."""
        ids = list(self._calls)
        self._calls.clear()
        return ids

    @property
    def unanswered_calls(self) -> int:
        """Calls sent and not answered yet, abandoned ones included (the protocol's view).

        Not ``PeerStatistics.calls_in_flight``, which counts the callers still waiting (the
        link's pending futures and stream inboxes): an abandoned call has no caller left,
        and a call a relay forwarded has none on this peer.
        """
        return len(self._calls)
