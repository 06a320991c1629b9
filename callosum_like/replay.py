"""Sans-IO sequencing of a resumable link: numbers, acknowledgements, what to send again.

Theory of operation: on a link opened with ``Peer(resume_timeout=...)`` both sides number
every message they send except those about the link itself (handshake, heartbeats, ``Ack``,
``Goodbye``: ``Trait.HANDSHAKE`` and ``Trait.LINK``). A numbered message travels behind an
*envelope*, one extra leading frame of ``ENVELOPE_SIZE`` bytes: the marker byte ``0xc1``
(never the first byte of a msgpack header), the message's sequence number and the sender's
cumulative acknowledgement (the last sequence number it received), both unsigned 64-bit
big-endian. ``Replay`` keeps both directions of one link:

* **Sending**: ``stamp`` numbers a message and keeps its frames until the remote
  acknowledges it (in any envelope, in an ``Ack``, or in its resumption handshake).
  What is kept is bounded by ``max_unacked_bytes``; past it ``stamp`` raises
  ``UnackedOverflow`` and the Peer ends the session.
* **Receiving**: ``accept`` takes the envelope of an arriving message. The next number is
  accepted; a number already received is a duplicate (``False``: drop it, it was handled);
  a number past the next one means something was lost on a connection that should lose
  nothing, and an acknowledgement of a number never sent is forged: both raise
  ``ProtocolError``.
* **Resumption**: each side says in its handshake what it received; ``resend_after`` checks
  that number against what it sent and returns what the other side still lacks, in order.

Every message is thus delivered once and in order across any number of connections,
whatever the connections lost, repeated or reordered, as long as each resumption starts
from the other side's count (tests/test_replay.py checks this with hypothesis).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import Final

from .errors import ProtocolError
from .wire.codec import Frame

__all__ = [
    "Replay",
    "UnackedOverflow",
    "ENVELOPE_SIZE",
    "ENVELOPE_MARKER",
    "ACK_EVERY",
    "ACK_EVERY_BYTES",
    "has_envelope",
]

#: The first byte of an envelope: msgpack's "never used" code, so never a header's.
ENVELOPE_MARKER: Final = 0xC1
_ENVELOPE: Final = struct.Struct(">BQQ")
#: Bytes in an envelope frame.
ENVELOPE_SIZE: Final = _ENVELOPE.size
#: A receiver acknowledges on its own (``Ack``) after this many messages it has not
#: acknowledged in an envelope of its own yet...
ACK_EVERY: Final = 64
#: ... or this many bytes of them, whichever comes first.
ACK_EVERY_BYTES: Final = 1 << 20


class UnackedOverflow(Exception):
    """The messages kept for the remote passed ``max_unacked_bytes``."""


def has_envelope(frames: Sequence[Frame]) -> bool:
    """Whether ``frames`` start with an envelope (a sequenced message)."""
    first = frames[0] if frames else b""
    return len(first) == ENVELOPE_SIZE and first[0] == ENVELOPE_MARKER


class Replay:
    """Both directions of one resumable link.

    Args:
        session: The session's id (from the connecting side's ``Hello``).
        max_unacked_bytes: The most bytes of sent messages kept for resending.
    """

    def __init__(self, session: str, max_unacked_bytes: int) -> None:
        self.session = session
        self._max_unacked = max_unacked_bytes
        self.sent = 0  # the last sequence number we gave
        self.acked = 0  # the last one the remote acknowledged
        self._kept: deque[tuple[int, list[Frame], int]] = deque()  # (seq, frames, size)
        self.kept_bytes = 0
        self.received = 0  # the last sequence number we accepted
        self._acked_out = 0  # the last one we told the remote we received
        self._unacked_in_bytes = 0  # bytes accepted since then
        self.duplicates = 0  # messages dropped because they had been received already

    # -- sending ------------------------------------------------------------------------

    def stamp(self, frames: list[Frame]) -> list[Frame]:
        """Number a message we send; return its frames with their envelope.

        The frames are kept until acknowledged.

        Raises:
            UnackedOverflow: Keeping them would pass ``max_unacked_bytes``.
        """
        size = sum(map(len, frames))
        if self.kept_bytes + size > self._max_unacked and self._kept:
            raise UnackedOverflow(
                f"{self.kept_bytes + size} bytes unacknowledged passed max_unacked_bytes "
                f"{self._max_unacked}"
            )
        self.sent += 1
        self._kept.append((self.sent, frames, size))
        self.kept_bytes += size
        return [self._envelope(self.sent), *frames]

    def _envelope(self, seq: int) -> bytes:
        self._acked_out = self.received
        self._unacked_in_bytes = 0
        return _ENVELOPE.pack(ENVELOPE_MARKER, seq, self.received)

    def acknowledged(self, seq: int) -> None:
        """The remote received everything up to ``seq``: forget those.

        Raises:
            ProtocolError: ``seq`` is more than we sent (a forged acknowledgement).
        """
        if seq > self.sent:
            raise ProtocolError(f"acknowledgement of message {seq}, but only {self.sent} were sent")
        if seq <= self.acked:
            return  # old news
        self.acked = seq
        kept = self._kept
        while kept and kept[0][0] <= seq:
            self.kept_bytes -= kept.popleft()[2]

    def resend_after(self, received: int) -> list[list[Frame]]:
        """The remote resumed having received up to ``received``: what it still lacks.

        Returns:
            The kept messages after ``received``, in order, each with a fresh envelope.

        Raises:
            ProtocolError: ``received`` is below what the remote acknowledged before, or
                more than we sent: not the session we kept.
        """
        if not self.acked <= received <= self.sent:
            raise ProtocolError(
                f"resumption from message {received}, but {self.acked} were acknowledged "
                f"and {self.sent} sent"
            )
        self.acknowledged(received)
        return [[self._envelope(seq), *frames] for seq, frames, _ in self._kept]

    # -- receiving ----------------------------------------------------------------------

    def accept(self, envelope: Frame, size: int) -> bool:
        """Take the envelope of an arriving message of ``size`` bytes.

        Returns:
            True to handle the message; False for a duplicate (handled before: drop it).

        Raises:
            ProtocolError: A bad envelope, a message missing before this one, or a forged
                acknowledgement.
        """
        marker, seq, ack = _ENVELOPE.unpack(envelope)
        if marker != ENVELOPE_MARKER:
            raise ProtocolError("not an envelope")
        self.acknowledged(ack)
        if seq <= self.received:
            self.duplicates += 1
            return False
        if seq != self.received + 1:
            raise ProtocolError(f"message {seq} arrived after {self.received}: some were lost")
        self.received = seq
        self._unacked_in_bytes += size
        return True

    def ack_due(self) -> bool:
        """Whether we owe the remote an ``Ack`` (received much that we did not acknowledge)."""
        return (
            self.received - self._acked_out >= ACK_EVERY
            or self._unacked_in_bytes >= ACK_EVERY_BYTES
        )

    def ack_pending(self) -> bool:
        """Whether anything we received is not acknowledged yet."""
        return self.received > self._acked_out

    def ack(self) -> int:
        """The number to send in an ``Ack`` now (recorded as acknowledged)."""
        self._acked_out = self.received
        self._unacked_in_bytes = 0
        return self.received
