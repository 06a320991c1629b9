"""One registry of message kinds: every kind declares its traits, and everything derives.

A kind added to ``wire.messages`` without a handler on the Peer, a rule on the relay, or a
place in the codec fails here; the traits themselves are pinned from the protocol's rules.
"""

from __future__ import annotations

import typing

import pytest

from callosum_like.hops import FORWARDING, Hop, rule_for
from callosum_like.receiving import Receiver
from callosum_like.wire import messages as m
from callosum_like.wire.codec import decode, encode

T = m.Trait


def test_the_registry_holds_every_kind_once_in_wire_order() -> None:
    assert [int(cls.KIND) for cls in m.MESSAGE_CLASSES] == sorted(int(k) for k in m.MessageKind)
    assert set(m.MESSAGE_CLASSES) == set(typing.get_args(m.Message))


def test_every_kind_has_a_handler_on_the_peer_and_nothing_else_has_one() -> None:
    assert set(Receiver.HANDLERS) == set(m.MESSAGE_CLASSES)


def test_every_kind_has_exactly_one_rule_on_the_relay() -> None:
    assert set(FORWARDING) == set(m.MESSAGE_CLASSES)


def test_a_kind_whose_traits_say_nothing_of_where_it_goes_gets_no_rule() -> None:
    @m.value_class(kw_only=True)
    class Orphan:
        KIND: typing.ClassVar = 99
        TRAITS: typing.ClassVar = frozenset({T.BODY})

    with pytest.raises(LookupError, match="Orphan has 0 relay rules"):
        rule_for(Orphan)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", m.MESSAGE_CLASSES, ids=lambda cls: cls.__name__)
def test_every_kind_round_trips_through_the_codec(cls: type[m.Message]) -> None:
    defaults: dict[str, object] = {
        "id": 1, "identity": "a", "assigned": "a", "max_body_size": 9, "method": "f",
        "name": "E", "repr": "E()", "traceback": "", "code": 1, "message": "",
        "amount": 1, "transfer": 1, "body": b"\xc0", "peer": "a", "seq": 1,
    }  # fmt: skip
    fields = {f: defaults[f] for f in cls.__dataclass_fields__ if f in defaults}
    msg = cls(**fields)
    assert decode(encode(msg), max_body_size=1024) == msg


def test_the_traits_are_the_protocols() -> None:
    assert m.kinds_with(T.HANDSHAKE) == {m.Hello, m.Welcome}
    assert m.kinds_with(T.BODY) == {m.Call, m.Result, m.StreamItem, m.UploadItem}
    assert m.kinds_with(T.REPLY) == {m.Result, m.Failure, m.Error, m.Cancelled, m.StreamEnd}
    assert m.kinds_with(T.CONTROL) == {m.Cancel, m.Credit}
    assert m.kinds_with(T.TRANSFER) == {m.Chunk, m.ChunkAck, m.ChunkAbort, m.ChunkStop}
    assert FORWARDING[m.Call] is Hop.ROUTED
    assert {cls for cls, hop in FORWARDING.items() if hop is Hop.TO_CALLER} == {
        m.Result, m.Failure, m.Error, m.Cancelled, m.StreamEnd, m.StreamItem,
    }  # fmt: skip
    assert {cls for cls, hop in FORWARDING.items() if hop is Hop.REFUSED} == {
        m.UploadItem, m.UploadEnd, m.UploadCredit,
    }  # fmt: skip
