"""The flap load's books and their verdict, which need no root: the rules written out by hand."""

from __future__ import annotations

import math

from callosum_like.tools.flaps.books import OK, Books, StreamCheck, check_stream, judge, percentile


def test_a_stream_is_intact_only_when_every_item_came_once_in_order() -> None:
    assert check_stream([0, 1, 2, 3], 4) == StreamCheck()
    assert check_stream([0, 1, 2, 3], 4).intact
    assert check_stream([0, 1, 3], 4) == StreamCheck(lost=1)
    assert check_stream([0, 1, 1, 2, 3], 4) == StreamCheck(repeated=1)
    assert check_stream([0, 2, 1, 3], 4) == StreamCheck(reordered=True)
    assert check_stream([0, 1, 2, 3, 4], 4) == StreamCheck(repeated=1)  # one too many
    assert check_stream([], 2) == StreamCheck(lost=2)
    assert not check_stream([1, 0], 2).intact


def test_the_verdict_compares_what_one_side_made_with_what_the_other_ran() -> None:
    manager, agent = Books(), Books()
    agent.made_one("agent/small/1", OK)
    agent.made_one("agent/small/2", OK)
    agent.made_one("agent/big/3", "PeerDisconnectedError")
    manager.ran.update(["agent/small/1", "agent/small/2", "agent/small/2"])  # 2 ran twice
    manager.made_one("manager/stream/1", OK)  # never ran: missing
    agent.ran.update(["manager/hold/9"])  # nobody made it: a stranger
    agent.received(StreamCheck(lost=2, repeated=1, reordered=True))
    verdict = judge([manager.report(), agent.report()])
    assert verdict.calls == 4
    assert dict(verdict.by_kind) == {"small": 2, "big": 1, "stream": 1}
    assert dict(verdict.failed) == {"PeerDisconnectedError": 1}
    assert (verdict.duplicates, verdict.missing, verdict.strangers) == (1, 1, 1)
    assert (verdict.streams, verdict.lost_items, verdict.repeated_items) == (1, 2, 1)
    assert verdict.reordered_streams == 1
    assert verdict.passed is False


def test_a_clean_run_passes() -> None:
    manager, agent = Books(), Books()
    agent.made_one("agent/small/1", OK)
    manager.ran["agent/small/1"] += 1
    manager.made_one("manager/stream/1", OK)
    agent.ran["manager/stream/1"] += 1
    manager.received(check_stream([0, 1], 2))
    verdict = judge([manager.report(), agent.report()])
    assert verdict.passed is True
    assert verdict.as_dict()["passed"] is True
    assert manager.succeeded == 1


def test_a_call_that_failed_may_not_have_run_but_never_twice() -> None:
    agent, manager = Books(), Books()
    agent.made_one("agent/hold/1", "PeerDisconnectedError")  # its handler never ran: fine
    agent.made_one("agent/hold/2", "PeerDisconnectedError")
    manager.ran.update(["agent/hold/2", "agent/hold/2"])
    verdict = judge([agent.report(), manager.report()])
    assert (verdict.missing, verdict.duplicates) == (0, 1)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]  # 1 .. 100
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7
    assert math.isnan(percentile([], 0.5))
