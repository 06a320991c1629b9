"""The NATS payload layout without a server: pieces, reassembly and its limit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from callosum_like.lower.nats_envelope import (
    DATA,
    LAST,
    PART,
    Reassembly,
    Subjects,
    encode_payloads,
)

frames = st.lists(st.binary(max_size=300), min_size=1, max_size=4)


@given(st.lists(frames, min_size=1, max_size=5), st.integers(min_value=2, max_value=400))
def test_payloads_reassemble_to_the_messages(messages: list[list[bytes]], max_payload: int) -> None:
    payloads = encode_payloads(messages, max_payload)
    assert all(len(p) <= max_payload for p in payloads)
    reassembly = Reassembly(10_000)
    out = []
    for payload in payloads:
        got, problem = reassembly.feed(payload[0], payload[1:])
        assert problem is None
        out += got
    assert out == messages
    assert not reassembly.pending


def test_a_message_over_the_limit_is_dropped_once_and_its_pieces_skipped() -> None:
    reassembly = Reassembly(100)
    pieces = encode_payloads([[b"x" * 1000]], 64)
    problems = [reassembly.feed(p[0], p[1:])[1] for p in pieces]
    assert [p for p in problems if p] == ["a message of over 100 bytes"]
    assert reassembly.feed(DATA, encode_payloads([[b"next"]], 64)[0][1:]) == ([[b"next"]], None)


def test_pieces_cut_short_by_another_message_cost_only_that_message() -> None:
    reassembly = Reassembly(10_000)
    assert reassembly.feed(PART, b"\x00\x01") == ([], None)
    messages, problem = reassembly.feed(DATA, encode_payloads([[b"ok"]], 64)[0][1:])
    assert messages == [[b"ok"]]
    assert problem == "a large message's pieces ended early"


def test_garbage_is_a_problem_not_an_exception() -> None:
    reassembly = Reassembly(10_000)
    for kind, data in [(DATA, b""), (DATA, b"\x00\x05ab"), (LAST, b"\xff\xff")]:
        messages, problem = reassembly.feed(kind, data)
        assert messages == []
        assert problem is not None
        assert problem.startswith("a bad payload")


def test_keys_come_only_from_our_subjects_and_replies_only_to_the_identitys_inboxes() -> None:
    subjects = Subjects("svc")
    key = b"agent-1.abc.0"
    assert subjects.key_of(subjects.inbound(key)) == key
    assert subjects.key_of("svc.in.a.b") is None
    assert subjects.key_of("other.in.a.b.c") is None
    assert subjects.replies_to(key, "svc.out.agent-1._k.n.1")
    assert not subjects.replies_to(key, "svc.out.agent-2._k.n.1")
    assert not subjects.replies_to(key, "svc.out.agent-10._k.n.1")
    assert not subjects.replies_to(key, "_INBOX.x")
