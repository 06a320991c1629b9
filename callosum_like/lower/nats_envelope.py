"""What our NATS payloads hold, and the subjects they travel on, with no I/O.

Theory of operation: ``lower.nats_transport`` moves our messages (lists of frames) as NATS
messages. This module is its sans-IO half: the subject layout, the payload layout, and the
bounded reassembly of a message that did not fit in one NATS payload.

Subjects, for a service subject ``S`` (docs/nats.md):

* ``S.in.<identity>.<instance>.<generation>``: what a connecting endpoint sends to the bound
  one. The bound endpoint subscribes to ``S.in.*.*.*``; the three last tokens are the
  remote's key. ``<instance>`` is random per connecting endpoint (one identity may have
  several), ``<generation>`` counts its links (a new one after each loss).
* ``S.out.<identity>.<instance>.<generation>``: what the bound endpoint sends to that remote,
  which alone subscribes to it (``S.out.<identity>.<instance>.*``).
  ``S.out.<identity>._k.>`` are its reply inboxes (the knock below).

So a NATS user allowed to publish only to ``S.in.<identity>.*`` and to subscribe only to
``S.out.<identity>.>`` can neither speak as nor listen as another identity: the server's
permissions make ``<identity>`` a proven identity (``lower.nats_permissions`` writes them).

Payloads: the first byte says what the rest is.

* ``DATA``: one or more messages back to back in the stream framing (``wire.framing``).
* ``PART`` then ``LAST``: the pieces of one ``DATA`` payload too large for the server's
  ``max_payload``, in order, with nothing else of the same sender between them (NATS keeps
  the order of one connection's messages on one subject). ``Reassembly`` joins them, up to a
  limit, and drops a message whose pieces do not add up.
* ``KNOCK``: a request of the connecting side (with a reply subject): "know me under this
  key". The bound side answers with ``KNOCK`` once the key is known. No answer (NATS's "no
  responders") means nobody serves the subject yet.
* ``BYE``: the sender forgets the key it is sent on or from (an endpoint closing, a remote
  dropped); the connecting side knocks again with a new key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ..errors import ProtocolError
from ..wire.framing import MAX_FRAMES, Buffer, pack_batch, split_batch

__all__ = [
    "DATA",
    "PART",
    "LAST",
    "KNOCK",
    "BYE",
    "REASSEMBLY_SLACK",
    "Subjects",
    "encode_payloads",
    "Reassembly",
]

DATA: Final = 0
PART: Final = 1
LAST: Final = 2
KNOCK: Final = 3
BYE: Final = 4

#: Bytes a reassembled message may hold beyond ``max_frame_size``: its frame count and
#: lengths, and a small header frame beside a body at the limit (our headers are far smaller).
REASSEMBLY_SLACK: Final = 64 * 1024 + 2 + 4 * MAX_FRAMES

_DATA_BYTE: Final = bytes([DATA])
_PART_BYTE: Final = bytes([PART])
_LAST_BYTE: Final = bytes([LAST])


class Subjects:
    """The subjects of one service subject (see the module doc).

    Args:
        subject: The service subject (``NATSAddress.subject``).
    """

    def __init__(self, subject: str) -> None:
        self.subject = subject
        #: What the bound endpoint subscribes to.
        self.all_in = f"{subject}.in.*.*.*"
        self._in_prefix = f"{subject}.in."
        self._out_prefix = f"{subject}.out."

    def inbound(self, key: bytes) -> str:
        """Where the remote ``key`` (``b"<identity>.<instance>.<generation>"``) sends to."""
        return self._in_prefix + key.decode()

    def outbound(self, key: bytes) -> str:
        """Where the bound side sends to the remote ``key``."""
        return self._out_prefix + key.decode()

    def inbox_prefix(self, identity: str) -> str:
        """The prefix of ``identity``'s reply inboxes (covered by its subscribe permission)."""
        return f"{self._out_prefix}{identity}._k"

    def key_of(self, subject: str) -> bytes | None:
        """The remote key of a subject the bound side received on, or None if not ours."""
        if not subject.startswith(self._in_prefix):
            return None
        rest = subject[len(self._in_prefix) :]
        if rest.count(".") != 2:
            return None
        return rest.encode()

    def replies_to(self, key: bytes, reply: str) -> bool:
        """Whether ``reply`` is one of the inboxes of the identity in ``key`` (not forged)."""
        identity = key.partition(b".")[0].decode()
        return reply.startswith(self.inbox_prefix(identity) + ".")


def encode_payloads(messages: Sequence[Sequence[Buffer]], max_payload: int) -> list[bytes]:
    """The NATS payloads that carry ``messages``: one ``DATA``, or its pieces.

    Args:
        messages: Messages (each a list of frames) for one remote, in order.
        max_payload: The largest payload the server takes (its ``max_payload``).

    Raises:
        ValueError: A message has no frames or too many, or ``max_payload`` is under 2.
    """
    if max_payload < 2:
        raise ValueError(f"max_payload must be at least 2, got {max_payload}")
    payload = pack_batch(messages, _DATA_BYTE)
    if len(payload) <= max_payload:
        return [payload]
    step = max_payload - 1
    view = memoryview(payload)[1:]
    pieces = [_PART_BYTE + view[at : at + step] for at in range(0, len(view), step)]
    pieces[-1] = _LAST_BYTE + pieces[-1][1:]
    return pieces


class Reassembly:
    """Joins the pieces of one remote's large messages, never holding more than a limit.

    Args:
        limit: The largest reassembled payload accepted, in bytes.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pieces: list[bytes] = []
        self._size = 0
        self._discarding = False

    @property
    def pending(self) -> bool:
        """Whether the pieces of a message are being gathered (or skipped)."""
        return bool(self._pieces) or self._discarding

    def feed(
        self, kind: int, data: bytes, offset: int = 0
    ) -> tuple[list[list[Buffer]], str | None]:
        """Take one ``DATA``, ``PART`` or ``LAST`` payload's bytes (after the kind byte).

        The bytes start at ``offset`` in ``data`` (1: a whole payload, kind byte included,
        which a ``DATA`` payload is then split from without a copy).

        Returns:
            The messages now complete (none while pieces are still coming), and why
            something was dropped, if it was: a message whose pieces were cut short by
            another message, a message over the limit (its remaining pieces are skipped
            without being kept), or a body that does not split into messages. The caller
            counts each reason as one dropped message; what follows is read normally.
        """
        if kind == DATA:
            cut = "a large message's pieces ended early" if self.pending else None
            self._reset()
            messages, problem = _split(data, offset)
            return messages, problem or cut
        if offset:
            data = data[offset:]
        self._size += len(data)
        problem = None
        if not self._discarding and self._size > self._limit:
            self._pieces = []
            self._discarding = True
            problem = f"a message of over {self._limit} bytes"
        if not self._discarding:
            self._pieces.append(data)
        if kind == PART:
            return [], problem
        pieces, discarded = self._pieces, self._discarding
        self._reset()
        if discarded:
            return [], problem
        return _split(b"".join(pieces))

    def _reset(self) -> None:
        self._pieces = []
        self._size = 0
        self._discarding = False


def _split(data: bytes, offset: int = 0) -> tuple[list[list[Buffer]], str | None]:
    try:
        return split_batch(data, offset), None
    except ProtocolError as exc:
        return [], f"a bad payload: {exc}"
