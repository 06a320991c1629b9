"""aioquic's connection, with receive credit that follows the Peer, and a server's asks.

Theory of operation: ``CreditedConnection`` is aioquic's ``QuicConnection`` with the changes
``lower.quic_link`` needs, each where aioquic has no public setting:

* its connection-level receive limit (MAX_DATA) is a ``ReceiveCredit``, which grows only as
  the Peer takes what arrived, not as it arrives (docs/quic.md, "Memory");
* ``ServerConnection`` asks the client for a certificate, and hands over the one it sent.
"""

from __future__ import annotations

from typing import Any

from aioquic.quic.connection import Limit, QuicConnection
from aioquic.quic.packet import QuicFrameType

__all__ = ["CreditedConnection", "ReceiveCredit", "ServerConnection"]


class ReceiveCredit(Limit):
    """The connection's MAX_DATA, raised only in step with what the Peer has taken.

    aioquic doubles its receive limit once half of it is used, however much of what arrived
    is still unread. Here each raise it asks for is clamped to ``delivered - unread +
    window``: the remote may send at most ``window`` bytes beyond what aioquic delivered in
    order (``delivered``; what arrived beyond a gap waits in aioquic's stream buffers and
    counts against the window until the gap is filled) and was taken from the endpoint's
    events (``unread`` counts what was not, with ``EVENT_OVERHEAD`` per message) or is held
    elsewhere under its own bound (an unfinished message: ``max_frame_size`` per stream; a
    message waiting for a barrier: ``lanes.MAX_HELD_SIZE``). A raise smaller than an eighth
    of the window waits for more, so that MAX_DATA is not repeated in every packet.
    """

    def __init__(self, window: int) -> None:
        super().__init__(frame_type=QuicFrameType.MAX_DATA, name="max_data", value=window)
        self.window = window
        #: Bytes of received messages the Peer has not taken yet (kept by the link).
        self.unread = 0
        #: Stream bytes aioquic has delivered in order (kept by the link).
        self.delivered = 0

    @property
    def value(self) -> int:
        """The limit granted (aioquic reads it to check what arrives, and to send it)."""
        return self._value

    @value.setter
    def value(self, wanted: int) -> None:
        if not hasattr(self, "_value"):  # Limit.__init__'s initial value
            self._value = wanted
            return
        allowed = min(wanted, self.target())
        if allowed >= self._value + self.window // 8:
            self._value = allowed

    def target(self) -> int:
        """The highest limit the Peer's consumption allows now."""
        return self.delivered - self.unread + self.window

    def starved(self) -> bool:
        """Whether a raise is due that no packet of ours may carry soon (the remote waits)."""
        return self.target() >= self.sent + self.window // 2 and self.used * 2 > self._value


class CreditedConnection(QuicConnection):
    """An aioquic connection whose receive credit follows the Peer's consumption.

    Args:
        receive_window: Bytes the remote may send beyond what the Peer has taken.
    """

    def __init__(self, *, receive_window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.credit = ReceiveCredit(receive_window)
        # aioquic has no hook for its receive window; ReceiveCredit replaces its limit:
        self._local_max_data = self.credit


class ServerConnection(CreditedConnection):
    """A server's QUIC connection that asks the client for its certificate."""

    def __init__(self, *, request_certificate: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._request_certificate = request_certificate

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if self._request_certificate:  # aioquic's only switch for a CertificateRequest:
            self.tls._request_client_certificate = True  # noqa: SLF001

    def peer_certificate(self) -> tuple[Any, list[Any]]:
        """The certificate the remote sent, and its chain (``None, []`` if none)."""
        tls = self.tls
        return tls._peer_certificate, list(tls._peer_certificate_chain)  # noqa: SLF001
