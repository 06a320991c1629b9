"""The QUIC lanes without sockets: which lane each message takes, and the barrier gate."""

from __future__ import annotations

import cramjam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callosum_like.errors import ProtocolError
from callosum_like.lower.lanes import (
    CONTROL,
    LaneGate,
    LanePlanner,
    LaneSender,
    parse_reset_code,
    parse_stamp,
    reset_code,
)
from callosum_like.wire import messages as m
from callosum_like.wire.codec import encode, encode_head, pack_body


def plan(planner: LanePlanner, msg: m.Message) -> tuple[object, bool, bool]:
    p, _ = planner.plan(encode(msg))
    return p.lane, p.barrier, p.last


def test_handshake_goodbye_and_cancel_are_barriers_on_the_control_lane() -> None:
    planner = LanePlanner()
    for msg in (
        m.Hello(identity="a", max_body_size=10),
        m.Welcome(identity="b", assigned="a", max_body_size=10),
        m.Goodbye(reason="bye"),
        m.Cancel(id=3),
    ):
        assert plan(planner, msg) == (CONTROL, True, False)


def test_link_messages_take_the_control_lane_in_order() -> None:
    planner = LanePlanner()
    for msg in (m.Ping(), m.Pong(), m.Credit(id=1, amount=8), m.ChunkAck(transfer=1, amount=1)):
        assert plan(planner, msg) == (CONTROL, False, False)
    p, _ = planner.plan([b"\xc1" + bytes(16), b"header"])  # a numbered (resumable) message
    assert p.lane == CONTROL
    assert planner.plan([b"not msgpack \xc1"])[0].lane == CONTROL


def test_a_call_and_its_reply_each_take_a_lane_that_ends_with_them() -> None:
    planner = LanePlanner()
    assert plan(planner, m.Call(id=7, method="x", body=pack_body(1))) == (("call", 7), False, True)
    assert plan(planner, m.StreamItem(id=7, body=pack_body(1))) == (("reply", 7), False, False)
    assert plan(planner, m.StreamEnd(id=7)) == (("reply", 7), False, True)
    assert plan(planner, m.Result(id=8, body=pack_body(1))) == (("reply", 8), False, True)


def test_calls_of_one_key_share_a_lane_that_stays_open() -> None:
    planner = LanePlanner()
    for i in range(3):
        call = m.Call(id=i, method="x", order_key="k", body=pack_body(i))
        assert plan(planner, call) == (("key", "k"), False, False)


def test_an_upload_keeps_its_calls_lane_until_its_end() -> None:
    planner = LanePlanner()
    call = m.Call(id=4, method="x", order_key="k", upload=True)
    assert plan(planner, call)[0] == ("key", "k")
    assert plan(planner, m.UploadItem(id=4, body=pack_body(1))) == (("key", "k"), False, False)
    assert plan(planner, m.UploadEnd(id=4)) == (("key", "k"), False, False)  # a key lane stays
    assert plan(planner, m.Call(id=5, method="x", upload=True)) == (("call", 5), False, False)
    assert plan(planner, m.UploadEnd(id=5)) == (("call", 5), False, True)


def test_a_chunked_body_follows_its_head_and_ends_the_lane_with_its_last_byte() -> None:
    planner = LanePlanner()
    packed = pack_body(b"x" * 100_000)
    body = bytes(packed.joined() if isinstance(packed, m.LargeBody) else packed)
    head = encode_head(m.Result(id=9, body=body), transfer=2)
    p, _ = planner.plan(head)
    assert (p.lane, p.last) == (("reply", 9), False)
    half = len(body) // 2
    first = encode(m.Chunk(transfer=2, body=body[:half]))
    assert planner.plan(first)[0].last is False
    compressed = encode(m.Chunk(transfer=2, body=body[half:]), compress=True)
    assert compressed[0] != first[0]  # it was compressed: the planner reads the raw size
    last, _ = planner.plan(compressed)
    assert (last.lane, last.last) == (("reply", 9), True)


def test_a_cancelled_upload_resets_its_lane() -> None:
    planner = LanePlanner()
    planner.plan(encode(m.Call(id=5, method="x", upload=True)))
    p, ended = planner.plan(encode(m.Cancel(id=5)))
    assert (p.lane, p.barrier, p.reset, ended) == (CONTROL, True, ("call", 5), [])


def test_cancelled_is_a_barrier_on_the_control_lane_that_resets_the_replies() -> None:
    planner = LanePlanner()
    assert planner.plan(encode(m.StreamItem(id=7, body=b"x")))[0].lane == ("reply", 7)
    p, _ = planner.plan(encode(m.Cancelled(id=7)))
    assert (p.lane, p.barrier, p.reset) == (CONTROL, True, ("reply", 7))


@given(st.integers(0, 2**38 - 1), st.integers(0, 2**24 - 1))
def test_a_reset_code_says_its_epoch_and_count(epoch: int, count: int) -> None:
    code = reset_code(epoch, count)
    assert code is not None
    assert code < 2**62
    assert parse_reset_code(code) == (epoch, count)
    assert reset_code(epoch, 2**24) is None


def test_messages_lost_on_a_reset_stream_let_their_barrier_pass() -> None:
    sender, gate = LaneSender(), LaneGate()
    kept = [b"kept"]
    assert gate.arrive(sender.stamp(False), kept) == [kept]
    sender.stamp(False)  # sent on a stream that is then reset: it never arrives
    lost_later = sender.stamp(False)
    cancel = [b"cancel"]
    assert gate.arrive(sender.stamp(True), cancel) == []  # waits for two more
    after = [b"after"]
    assert gate.arrive(sender.stamp(False), after) == []
    assert gate.lost(0, 2) == [cancel, after]
    with pytest.raises(ProtocolError):
        gate.lost(0, 1)  # epoch 0 is closed
    assert parse_stamp(lost_later) == (False, 0)


def test_messages_lost_in_a_later_epoch_count_once_it_opens() -> None:
    sender, gate = LaneSender(), LaneGate()
    first = sender.stamp(True)
    sender.stamp(False)  # epoch 1, on a reset stream
    second = sender.stamp(True)
    assert gate.lost(1, 1) == []  # before its epoch opened (the control lane is late)
    assert gate.arrive(first, [b"1"]) == [[b"1"]]
    assert gate.arrive(second, [b"2"]) == [[b"2"]]  # not waiting for the lost one


def test_a_key_whose_lane_was_pushed_out_comes_back_as_a_barrier() -> None:
    planner = LanePlanner()
    ended: list[object] = []
    for i in range(100):
        p, gone = planner.plan(encode(m.Call(id=i, method="x", order_key=f"k{i}")))
        assert not p.barrier
        ended += gone
    assert ("key", "k0") in ended
    p, _ = planner.plan(encode(m.Call(id=100, method="x", order_key="k0")))
    assert p.barrier


# -- the gate ---------------------------------------------------------------------------------

#: A message to send: (lane number, is it a barrier). Barriers all go on lane 0 (control).
sends = st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(sends, st.randoms(use_true_random=False))
def test_the_gate_keeps_lane_order_and_puts_each_barrier_in_its_place(
    messages: list[tuple[int, bool]], rnd: object
) -> None:
    sender = LaneSender()
    lanes: dict[int, list[tuple[bytes, int]]] = {}
    barriers = []
    for n, (lane, barrier) in enumerate(messages):
        lane = 0 if barrier else lane
        if barrier:
            barriers.append(n)
        lanes.setdefault(lane, []).append((sender.stamp(barrier), n))
    gate = LaneGate()
    out: list[int] = []
    queues = {k: list(v) for k, v in lanes.items()}
    while queues:  # the network delivers the lanes in any interleaving, each in order
        lane = rnd.choice(sorted(queues))  # type: ignore[attr-defined]
        stamp, n = queues[lane].pop(0)
        if not queues[lane]:
            del queues[lane]
        out += [int(f[0]) for f in gate.arrive(stamp, [str(n).encode()])]
    assert sorted(out) == list(range(len(messages)))
    assert gate.held == 0
    for lane_messages in lanes.values():
        sent = [n for _, n in lane_messages]
        assert [n for n in out if n in sent] == sent
    for b in barriers:
        position = out.index(b)
        assert set(out[:position]) == set(range(b))


def test_a_barrier_with_too_many_messages_before_it_is_a_violation() -> None:
    sender, gate = LaneSender(), LaneGate()
    gate.arrive(sender.stamp(False), [b"a"])
    lying = LaneSender()
    with pytest.raises(ProtocolError):
        gate.arrive(lying.stamp(True), [b"barrier"])  # announces 0 ordinary messages


def test_messages_held_for_a_barrier_that_never_comes_are_bounded() -> None:
    sender = LaneSender()
    sender.stamp(True)  # a barrier we never deliver
    gate = LaneGate(max_held_size=1000)
    with pytest.raises(ProtocolError, match="held"):
        for _ in range(20):
            gate.arrive(sender.stamp(False), [b"x" * 100])


def test_a_malformed_stamp_is_a_violation() -> None:
    with pytest.raises(ProtocolError):
        LaneGate().arrive(b"\x07" + bytes(8), [b"x"])
    with pytest.raises(ProtocolError):
        LaneGate().arrive(b"short", [b"x"])


def test_raw_snappy_says_its_size() -> None:  # what the planner relies on for chunk sizes
    body = b"y" * 70_000
    assert bytes(cramjam.snappy.compress_raw(body))[:3] == bytes([0xF0, 0xA2, 0x04])
