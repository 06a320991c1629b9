"""The resumable link's sequencing, without sockets: each message is handled exactly once.

Two ``Replay`` ends exchange numbered messages over connections that hypothesis makes lose,
repeat and reorder frames at will, and break; after each break the two ends resume from
each other's counts, as the Peers' handshake does. Whatever happened, each side handles
every message the other sent exactly once, in the order it was sent.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callosum_like.errors import ProtocolError
from callosum_like.replay import (
    ACK_EVERY,
    ENVELOPE_SIZE,
    Replay,
    UnackedOverflow,
    has_envelope,
)


@dataclass
class End:
    """One side: its replay state, what it sent and what it handled."""

    name: str
    replay: Replay = field(default_factory=lambda: Replay("s", 1 << 30))
    sent: list[bytes] = field(default_factory=list)
    handled: list[bytes] = field(default_factory=list)

    def send(self, wire: list[list[bytes]]) -> None:
        body = f"{self.name}-{len(self.sent) + 1}".encode()
        self.sent.append(body)
        wire.append([bytes(f) for f in self.replay.stamp([body])])

    def receive(self, frames: list[bytes]) -> None:
        assert has_envelope(frames)
        if self.replay.accept(frames[0], len(frames[1])):
            self.handled.append(frames[1])


def resume(a: End, b: End) -> tuple[list[list[bytes]], list[list[bytes]]]:
    """A new connection: each end resends what the other's count says it lacks."""
    a_received, b_received = a.replay.received, b.replay.received
    to_b = [[bytes(f) for f in m] for m in a.replay.resend_after(b_received)]
    to_a = [[bytes(f) for f in m] for m in b.replay.resend_after(a_received)]
    return to_b, to_a


OPERATIONS = st.sampled_from(["send_a", "send_b", "deliver", "drop", "repeat", "swap", "break"])


class Network:
    """The two ends and the frames in flight between them, in both directions."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.a, self.b = End("a"), End("b")
        self.to_b: list[list[bytes]] = []
        self.to_a: list[list[bytes]] = []

    def reconnect(self) -> None:
        self.to_b, self.to_a = resume(self.a, self.b)

    def apply(self, operation: str) -> None:
        if operation == "send_a":
            self.a.send(self.to_b)
        elif operation == "send_b":
            self.b.send(self.to_a)
        elif operation == "break":
            self.reconnect()
        else:
            self._disturb(operation)

    def _disturb(self, operation: str) -> None:
        wire, end = self.rng.choice([(self.to_b, self.b), (self.to_a, self.a)])
        if not wire:
            return
        index = self.rng.randrange(len(wire))
        if operation == "drop":
            del wire[index]
        elif operation == "repeat":
            wire.insert(index, wire[index])
        elif operation == "swap":
            wire[0], wire[index] = wire[index], wire[0]
        else:  # deliver the first in flight
            try:
                end.receive(wire.pop(0))
            except ProtocolError:  # a gap: the Peer drops the connection and resumes
                self.reconnect()


@settings(max_examples=300, deadline=None)
@given(operations=st.lists(OPERATIONS, max_size=120), seed=st.integers(0, 2**32 - 1))
def test_any_loss_repetition_and_reordering_delivers_each_message_once_in_order(
    operations: list[str], seed: int
) -> None:
    net = Network(seed)
    for operation in operations:
        net.apply(operation)
    # Finally a clean connection that delivers everything in order.
    net.reconnect()
    for frames in net.to_b:
        net.b.receive(frames)
    for frames in net.to_a:
        net.a.receive(frames)
    assert net.b.handled == net.a.sent
    assert net.a.handled == net.b.sent


def test_an_acknowledgement_frees_what_was_kept() -> None:
    a, b = End("a"), End("b")
    wire: list[list[bytes]] = []
    for _ in range(3):
        a.send(wire)
    assert a.replay.kept_bytes == sum(len(m[1]) for m in wire)
    for frames in wire:
        b.receive(frames)
    back: list[list[bytes]] = []
    b.send(back)  # its envelope acknowledges the three
    a.receive(back[0])
    assert a.replay.kept_bytes == 0
    assert a.replay.resend_after(3) == []


def test_a_forged_acknowledgement_is_refused() -> None:
    replay = Replay("s", 1 << 20)
    replay.stamp([b"x"])
    with pytest.raises(ProtocolError, match="acknowledgement of message 2"):
        replay.acknowledged(2)
    with pytest.raises(ProtocolError, match="resumption from message 5"):
        replay.resend_after(5)


def test_a_resumption_from_before_an_acknowledgement_is_refused() -> None:
    replay = Replay("s", 1 << 20)
    for _ in range(3):
        replay.stamp([b"x"])
    replay.acknowledged(2)
    with pytest.raises(ProtocolError, match="2 were acknowledged"):
        replay.resend_after(1)


def test_a_replayed_message_is_a_duplicate_and_a_gap_is_an_error() -> None:
    sender, receiver = Replay("s", 1 << 20), Replay("s", 1 << 20)
    first, second, third = (sender.stamp([b"m"]) for _ in range(3))
    assert receiver.accept(first[0], 1)
    assert not receiver.accept(first[0], 1)
    assert receiver.duplicates == 1
    with pytest.raises(ProtocolError, match="some were lost"):
        receiver.accept(third[0], 1)
    assert receiver.accept(second[0], 1)
    assert receiver.received == 2


def test_what_is_kept_is_bounded() -> None:
    replay = Replay("s", max_unacked_bytes=10)
    replay.stamp([b"x" * 6])
    with pytest.raises(UnackedOverflow, match="max_unacked_bytes 10"):
        replay.stamp([b"x" * 6])
    replay.acknowledged(1)
    replay.stamp([b"x" * 6])  # room again
    # One message larger than the bound goes when nothing else is kept.
    Replay("s", max_unacked_bytes=10).stamp([b"x" * 50])


def test_a_receiver_acknowledges_on_its_own_after_many_messages() -> None:
    sender, receiver = Replay("s", 1 << 30), Replay("s", 1 << 30)
    for _ in range(ACK_EVERY):
        assert not receiver.ack_due()
        receiver.accept(sender.stamp([b"m"])[0], 1)
        assert receiver.ack_pending()
    assert receiver.ack_due()
    assert receiver.ack() == ACK_EVERY
    assert not receiver.ack_pending()


def test_an_envelope_is_recognised_only_by_its_marker_and_size() -> None:
    envelope = Replay("s", 100).stamp([b"x"])[0]
    assert len(envelope) == ENVELOPE_SIZE
    assert has_envelope([envelope, b"x"])
    assert not has_envelope([b"\x93\x01\x09\x00"])
    assert not has_envelope([envelope[:-1] + b""])
