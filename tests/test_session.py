"""The sans-IO session: its state tables, pair by pair, and heartbeats on an injected clock.

The expected answers are written out here from the protocol's rules (``RULES`` and
``CALL_RULES``, each row with its reason), never read from the module's own tables: a changed
row in ``session`` fails here. Every ``(state, input)`` pair is tried: an allowed pair moves to
the rule's state, a refused one raises ``ProtocolError`` and changes nothing. A hypothesis walk
then checks long sequences against the rules.
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callosum_like.errors import ProtocolError
from callosum_like.session import (
    ACCEPTS,
    CALL_TRANSITIONS,
    LINK_TRANSITIONS,
    CallInput,
    CallState,
    LinkInput,
    LinkState,
    Session,
)
from callosum_like.wire import messages as m

pytestmark = pytest.mark.timeout(30)

INTERVAL = 5.0
TIMEOUT = 15.0
T0 = 1000.0

#: One message of every kind.
MESSAGES: dict[m.MessageKind, m.Message] = {
    msg.KIND: msg
    for msg in (
        m.Hello(identity="agent-1", max_body_size=1024),
        m.Welcome(identity="server", assigned="agent-1", max_body_size=1024),
        m.Call(id=1, method="echo"),
        m.Result(id=1),
        m.Failure(id=1, name="ValueError", repr="ValueError()", traceback=""),
        m.Error(id=1, code=1, message=""),
        m.Cancel(id=1),
        m.Cancelled(id=1),
        m.Ping(),
        m.Pong(),
        m.Ack(seq=1),
        m.Goodbye(),
        m.StreamItem(id=1),
        m.StreamEnd(id=1),
        m.Credit(id=1, amount=1),
        m.Chunk(transfer=1, body=b"x"),
        m.ChunkAck(transfer=1, amount=1),
        m.ChunkAbort(transfer=1),
        m.ChunkStop(transfer=1),
        m.UploadItem(id=1),
        m.UploadEnd(id=1),
        m.UploadCredit(id=1, amount=1),
        m.PeerUp(peer="agent-1"),
        m.PeerDown(peer="agent-1"),
    )
}


_S, _I = LinkState, LinkInput
#: The link's life by the protocol's rules: the state each input leads to, or None where the
#: input is refused in that state.
RULES: dict[tuple[LinkState, LinkInput], LinkState | None] = {
    # Before the handshake: only the handshake opens a link. Our close ends it with nobody to
    # say goodbye to; being turned away, losing the connection or hearing nothing breaks it.
    (_S.CONNECTING, _I.HANDSHAKE): _S.OPEN,
    (_S.CONNECTING, _I.CLOSE): _S.CLOSED,
    (_S.CONNECTING, _I.CLOSED): None,  # no close of ours is under way
    (_S.CONNECTING, _I.GOODBYE): _S.BROKEN,
    (_S.CONNECTING, _I.LOST): _S.BROKEN,
    (_S.CONNECTING, _I.EXPIRE): _S.BROKEN,
    (_S.CONNECTING, _I.SUSPEND): None,  # no session to keep before the handshake
    (_S.CONNECTING, _I.RESUME): None,  # a new connection's link resumes nothing itself
    # Open: a second handshake is a protocol violation. Our close starts CLOSING (a Goodbye
    # goes out); the remote leaving, the connection dropping or silence break the link.
    (_S.OPEN, _I.HANDSHAKE): None,
    (_S.OPEN, _I.CLOSE): _S.CLOSING,
    (_S.OPEN, _I.CLOSED): None,
    (_S.OPEN, _I.GOODBYE): _S.BROKEN,
    (_S.OPEN, _I.LOST): _S.BROKEN,
    (_S.OPEN, _I.EXPIRE): _S.BROKEN,
    # A resumable link whose connection was lost (or went silent) keeps its session.
    (_S.OPEN, _I.SUSPEND): _S.SUSPENDED,
    (_S.OPEN, _I.RESUME): None,  # only a suspended session is resumed
    # Suspended: a resumption opens it again; resume_timeout passing (EXPIRE) or the
    # session being refused or replaced (LOST) breaks it; our close ends it with nobody to
    # say goodbye to. It has no connection: nothing can arrive on it (GOODBYE), and no
    # second handshake, close-finishing or suspension applies.
    (_S.SUSPENDED, _I.RESUME): _S.OPEN,
    (_S.SUSPENDED, _I.EXPIRE): _S.BROKEN,
    (_S.SUSPENDED, _I.LOST): _S.BROKEN,
    (_S.SUSPENDED, _I.CLOSE): _S.CLOSED,
    (_S.SUSPENDED, _I.GOODBYE): None,
    (_S.SUSPENDED, _I.HANDSHAKE): None,
    (_S.SUSPENDED, _I.CLOSED): None,
    (_S.SUSPENDED, _I.SUSPEND): None,
    # Closing: our close finishes it; whatever the remote does meanwhile changes nothing, as
    # the close already fails every call with PeerClosedError. Closing twice is a bug.
    (_S.CLOSING, _I.HANDSHAKE): None,
    (_S.CLOSING, _I.CLOSE): None,
    (_S.CLOSING, _I.CLOSED): _S.CLOSED,
    (_S.CLOSING, _I.GOODBYE): _S.CLOSING,
    (_S.CLOSING, _I.LOST): _S.CLOSING,
    (_S.CLOSING, _I.EXPIRE): _S.CLOSING,
    (_S.CLOSING, _I.SUSPEND): None,  # we close: nothing is kept
    (_S.CLOSING, _I.RESUME): None,
    # CLOSED and BROKEN are final: a link that ended takes no further input.
    **{(_S.CLOSED, event): None for event in LinkInput},
    **{(_S.BROKEN, event): None for event in LinkInput},
}
#: Each call we send, by the protocol's rules (Rule 3 of ``session``).
CALL_RULES: dict[tuple[CallState, CallInput], CallState | None] = {
    (CallState.SENT, CallInput.REPLY): CallState.DONE,  # answered
    (CallState.SENT, CallInput.ABANDON): CallState.CANCELLING,  # Cancel sent; answer awaited
    (CallState.CANCELLING, CallInput.REPLY): CallState.DONE,  # the late answer, discarded
    (CallState.CANCELLING, CallInput.ABANDON): None,  # abandoned once already
    (CallState.DONE, CallInput.REPLY): None,  # forgotten: an unknown reply
    (CallState.DONE, CallInput.ABANDON): None,
}


def test_the_rules_cover_every_pair() -> None:
    assert set(RULES) == set(itertools.product(LinkState, LinkInput))
    assert set(CALL_RULES) == set(itertools.product(CallState, CallInput))


def test_the_tables_are_the_rules() -> None:
    assert {pair: new for pair, new in RULES.items() if new is not None} == LINK_TRANSITIONS
    assert {pair: new for pair, new in CALL_RULES.items() if new is not None} == CALL_TRANSITIONS


def new_session(now: float = T0) -> Session:
    return Session(heartbeat_interval=INTERVAL, heartbeat_timeout=TIMEOUT, now=now)


def path_to(target: LinkState) -> list[LinkInput]:
    """The shortest sequence of inputs that takes a new link to ``target`` (BFS on the table)."""
    queue: deque[tuple[LinkState, list[LinkInput]]] = deque([(LinkState.CONNECTING, [])])
    seen = {LinkState.CONNECTING}
    while queue:
        state, path = queue.popleft()
        if state is target:
            return path
        for (source, event), nxt in RULES.items():
            if source is state and nxt is not None and nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, [*path, event]))
    raise AssertionError(f"{target} is unreachable")


def session_in(state: LinkState, now: float = T0) -> Session:
    session = new_session(now)
    for event in path_to(state):
        session.transition(event)
    assert session.state is state
    return session


def session_with_call_in(state: CallState) -> tuple[Session, int]:
    session = session_in(LinkState.OPEN)
    call_id = session.start_call()
    if state is CallState.CANCELLING:
        session.call_input(call_id, CallInput.ABANDON)
    elif state is CallState.DONE:
        session.call_input(call_id, CallInput.REPLY)
    return session, call_id


# -- the link table -----------------------------------------------------------------------------


def test_every_link_state_is_reachable_and_closed_and_broken_are_final() -> None:
    for state in LinkState:
        path_to(state)
    sources = {source for source, _ in LINK_TRANSITIONS}
    assert LinkState.CLOSED not in sources
    assert LinkState.BROKEN not in sources
    assert {LinkState.CONNECTING, LinkState.OPEN, LinkState.CLOSING} <= sources


@pytest.mark.parametrize(
    ("state", "event"),
    list(itertools.product(LinkState, LinkInput)),
    ids=lambda v: v.value,
)
def test_every_link_pair(state: LinkState, event: LinkInput) -> None:
    session = session_in(state)
    expected = RULES[state, event]
    if expected is None:
        with pytest.raises(ProtocolError):
            session.transition(event)
        assert session.state is state
    else:
        assert session.transition(event) is expected
        assert session.state is expected
    assert session.is_open == (session.state is LinkState.OPEN)


@given(events=st.lists(st.sampled_from(LinkInput), max_size=20))
def test_link_walks_follow_the_table(events: list[LinkInput]) -> None:
    session = new_session()
    state = LinkState.CONNECTING
    for event in events:
        expected = RULES[state, event]
        if expected is None:
            with pytest.raises(ProtocolError):
                session.transition(event)
        else:
            assert session.transition(event) is expected
            state = expected
        assert session.state is state


def test_handshake_opens_and_records_the_remote() -> None:
    session = new_session()
    assert not session.is_open
    session.handshake("server", 4096)
    assert session.is_open
    assert (session.remote_identity, session.remote_max_body_size) == ("server", 4096)


@pytest.mark.parametrize("state", [s for s in LinkState if s is not LinkState.CONNECTING])
def test_handshake_only_once_and_only_while_connecting(state: LinkState) -> None:
    session = session_in(state)
    before = (session.remote_identity, session.remote_max_body_size)
    with pytest.raises(ProtocolError):
        session.handshake("intruder", 1)
    assert session.state is state
    assert (session.remote_identity, session.remote_max_body_size) == before


# -- what each state accepts --------------------------------------------------------------------


def test_accepts_table() -> None:
    handshake = {m.MessageKind.HELLO, m.MessageKind.WELCOME}
    traffic = set(m.MessageKind) - handshake
    assert set(ACCEPTS) == set(LinkState)
    assert ACCEPTS[LinkState.CONNECTING] == handshake | {m.MessageKind.GOODBYE}
    assert ACCEPTS[LinkState.OPEN] == traffic
    assert ACCEPTS[LinkState.CLOSING] == traffic
    assert ACCEPTS[LinkState.CLOSED] == frozenset()
    assert ACCEPTS[LinkState.BROKEN] == frozenset()
    assert set(MESSAGES) == set(m.MessageKind)


@pytest.mark.parametrize(
    ("state", "kind"),
    list(itertools.product(LinkState, m.MessageKind)),
    ids=lambda v: v.value if isinstance(v, LinkState) else v.name,
)
def test_every_state_accepts_exactly_its_kinds(state: LinkState, kind: m.MessageKind) -> None:
    session = session_in(state, now=T0)
    late = T0 + TIMEOUT - 1
    if kind in ACCEPTS[state]:
        session.receive(MESSAGES[kind], late)
        assert not session.expired(T0 + TIMEOUT)  # it counted as life
    else:
        with pytest.raises(ProtocolError):
            session.receive(MESSAGES[kind], late)
        assert session.expired(T0 + TIMEOUT)  # a refused message is no sign of life
    assert session.state is state  # receive checks; the Peer decides the transitions


# -- heartbeat ----------------------------------------------------------------------------------


def test_ping_is_due_every_interval() -> None:
    session = new_session(T0)
    assert not session.ping_due(T0)
    assert not session.ping_due(T0 + INTERVAL - 0.001)
    assert session.ping_due(T0 + INTERVAL)
    assert not session.ping_due(T0 + INTERVAL)  # recorded as sent
    assert not session.ping_due(T0 + 2 * INTERVAL - 0.001)
    assert session.ping_due(T0 + 2 * INTERVAL + 3)
    assert not session.ping_due(T0 + 3 * INTERVAL)  # counted from the last ping
    assert session.ping_due(T0 + 3 * INTERVAL + 3)


def test_the_bound_side_pings_only_a_remote_that_went_quiet() -> None:
    session = session_in(LinkState.OPEN, now=T0)
    # The remote's own pings arrive every interval: no ping back is due.
    for beat in range(1, 4):
        session.receive(m.Ping(), T0 + beat * INTERVAL)
        assert not session.ping_due(T0 + beat * INTERVAL + 0.5, quiet=INTERVAL)
    assert session.heard == T0 + 3 * INTERVAL
    # Silent for an interval: now it is pinged, once per interval.
    quiet = T0 + 4 * INTERVAL
    assert session.ping_due(quiet, quiet=INTERVAL)
    assert not session.ping_due(quiet + INTERVAL - 0.001, quiet=INTERVAL)
    assert session.ping_due(quiet + INTERVAL, quiet=INTERVAL)


def test_expiry_counts_from_the_last_message_heard() -> None:
    session = session_in(LinkState.OPEN, now=T0)
    assert not session.expired(T0 + TIMEOUT - 0.001)
    assert session.expired(T0 + TIMEOUT)
    session.receive(m.Pong(), T0 + 10)
    assert not session.expired(T0 + TIMEOUT)
    assert not session.expired(T0 + 10 + TIMEOUT - 0.001)
    assert session.expired(T0 + 10 + TIMEOUT)
    session.receive(m.Call(id=9, method="x"), T0 + 20)  # any message is life, not just Pong
    assert not session.expired(T0 + 10 + TIMEOUT)


def test_a_link_that_never_completes_its_handshake_expires() -> None:
    session = new_session(T0)
    assert session.expired(T0 + TIMEOUT)
    session.transition(LinkInput.EXPIRE)
    assert session.state is LinkState.BROKEN


def test_sending_pings_does_not_keep_a_link_alive() -> None:
    session = session_in(LinkState.OPEN, now=T0)
    assert session.ping_due(T0 + INTERVAL)
    assert session.ping_due(T0 + 2 * INTERVAL)
    assert session.expired(T0 + 3 * INTERVAL)


@given(
    interval=st.floats(0.01, 100),
    factor=st.floats(1.01, 10),
    steps=st.lists(st.tuples(st.floats(0, 50), st.booleans()), max_size=30),
)
def test_heartbeat_matches_a_model(
    interval: float, factor: float, steps: list[tuple[float, bool]]
) -> None:
    timeout = interval * factor
    now = T0
    session = Session(heartbeat_interval=interval, heartbeat_timeout=timeout, now=now)
    session.handshake("server", 1)
    heard = pinged = now
    for dt, hears in steps:
        now += dt
        if hears:
            session.receive(m.Pong(), now)
            heard = now
        assert session.expired(now) == (now - heard >= timeout)
        due = now - pinged >= interval
        assert session.ping_due(now) == due
        if due:
            pinged = now


# -- calls --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "event"),
    list(itertools.product(CallState, CallInput)),
    ids=lambda v: v.value,
)
def test_every_call_pair(state: CallState, event: CallInput) -> None:
    session, call_id = session_with_call_in(state)
    expected = CALL_RULES[state, event]
    if state is CallState.DONE:
        # A finished call is forgotten: anything about it now is a late or unknown reply.
        assert session.call_input(call_id, event) is None
        assert session.unanswered_calls == 0
    elif expected is None:
        with pytest.raises(ProtocolError):
            session.call_input(call_id, event)
        assert session.unanswered_calls == 1
        assert session.call_input(call_id, CallInput.REPLY) is CallState.DONE  # state kept
    else:
        assert session.call_input(call_id, event) is expected
        assert session.unanswered_calls == (0 if expected is CallState.DONE else 1)


@given(events=st.lists(st.sampled_from(CallInput), max_size=6))
def test_call_walks_follow_the_table(events: list[CallInput]) -> None:
    session = session_in(LinkState.OPEN)
    call_id = session.start_call()
    state: CallState | None = CallState.SENT
    for event in events:
        if state is None:
            assert session.call_input(call_id, event) is None
            continue
        expected = CALL_RULES[state, event]
        if expected is None:
            with pytest.raises(ProtocolError):
                session.call_input(call_id, event)
        else:
            assert session.call_input(call_id, event) is expected
            state = None if expected is CallState.DONE else expected
        assert session.unanswered_calls == (0 if state is None else 1)


def test_a_late_reply_to_an_abandoned_call_is_recognised_once() -> None:
    session = session_in(LinkState.OPEN)
    call_id = session.start_call()
    assert session.call_input(call_id, CallInput.ABANDON) is CallState.CANCELLING
    assert session.unanswered_calls == 1
    assert session.call_input(call_id, CallInput.REPLY) is CallState.DONE
    assert session.call_input(call_id, CallInput.REPLY) is None  # a second reply is unknown


def test_unknown_call_ids_give_none() -> None:
    session = session_in(LinkState.OPEN)
    assert session.call_input(12345, CallInput.REPLY) is None
    assert session.call_input(12345, CallInput.ABANDON) is None


def test_call_ids_are_unique_and_never_reused() -> None:
    session = session_in(LinkState.OPEN)
    first = [session.start_call() for _ in range(1000)]
    assert len(set(first)) == 1000
    assert all(type(i) is int and i > 0 for i in first)
    assert session.unanswered_calls == 1000
    for call_id in first[:500]:
        session.call_input(call_id, CallInput.REPLY)
    assert session.forget_calls() == first[500:]
    later = [session.start_call() for _ in range(10)]
    assert not set(later) & set(first)


def test_forget_calls_returns_sent_and_cancelling_calls_and_drops_them() -> None:
    session = session_in(LinkState.OPEN)
    sent, cancelling, done = session.start_call(), session.start_call(), session.start_call()
    session.call_input(cancelling, CallInput.ABANDON)
    session.call_input(done, CallInput.REPLY)
    assert sorted(session.forget_calls()) == sorted([sent, cancelling])
    assert session.unanswered_calls == 0
    assert session.forget_calls() == []
    assert session.call_input(sent, CallInput.REPLY) is None
