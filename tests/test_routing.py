"""The route table of announced names, without any I/O."""

from __future__ import annotations

import pytest

from callosum_like.errors import ProtocolError
from callosum_like.routing import RouteTable, scoped

pytestmark = pytest.mark.timeout(10)


def test_names_are_scoped_under_the_announcing_link() -> None:
    table = RouteTable()
    assert table.announce(b"k1", "cluster-b", "agent-3") == "cluster-b/agent-3"
    assert table.announce(b"k1", "cluster-b", "sub/agent-1") == "cluster-b/sub/agent-1"
    assert table.lookup("cluster-b/agent-3") == (b"k1", "agent-3")
    assert table.lookup("cluster-b/sub/agent-1") == (b"k1", "sub/agent-1")
    assert table.lookup("agent-3") is None
    assert set(table) == {"cluster-b/agent-3", "cluster-b/sub/agent-1"}
    assert len(table) == 2
    assert "cluster-b/agent-3" in table


def test_a_link_cannot_claim_a_name_of_another_subtree() -> None:
    table = RouteTable()
    table.announce(b"c", "cluster-c", "agent-1")
    assert table.announce(b"b", "cluster-b", "cluster-c/agent-1") == "cluster-b/cluster-c/agent-1"
    assert table.lookup("cluster-c/agent-1") == (b"c", "agent-1")
    # Withdrawing is scoped too: cluster-b cannot take cluster-c's agent down.
    assert table.withdraw(b"b", "cluster-b", "agent-1") is None
    assert table.withdraw(b"b", "cluster-c", "agent-1") is None
    assert "cluster-c/agent-1" in table


def test_announcing_twice_is_idempotent_and_withdraw_forgets() -> None:
    table = RouteTable()
    assert table.announce(b"k", "r", "a") == "r/a"
    assert table.announce(b"k", "r", "a") is None
    assert table.withdraw(b"k", "r", "a") == "r/a"
    assert table.withdraw(b"k", "r", "a") is None
    assert len(table) == 0


def test_dropping_a_link_returns_what_it_announced() -> None:
    table = RouteTable()
    for name in ("b", "a", "a/x"):
        table.announce(b"k", "r", name)
    table.announce(b"other", "s", "a")
    assert table.drop_link(b"k") == ["r/a", "r/a/x", "r/b"]
    assert table.drop_link(b"k") == []
    assert set(table) == {"s/a"}


def test_each_link_announces_a_bounded_number_of_names() -> None:
    table = RouteTable(max_per_link=2)
    table.announce(b"k", "r", "a")
    table.announce(b"k", "r", "b")
    with pytest.raises(ProtocolError):
        table.announce(b"k", "r", "c")
    assert table.announce(b"k", "r", "a") is None  # known names are not a new entry
    assert table.announce(b"j", "s", "c") == "s/c"  # the limit is per link
    table.withdraw(b"k", "r", "a")
    assert table.announce(b"k", "r", "c") == "r/c"


def test_scoped() -> None:
    assert scoped("r", None) == "r"
    assert scoped("r", "a/b") == "r/a/b"


def test_a_scoped_name_must_stay_a_route() -> None:
    table = RouteTable()
    assert table.announce(b"k", "r", "x" * 1022) == "r/" + "x" * 1022
    with pytest.raises(ProtocolError):
        table.announce(b"k", "r", "x" * 1023)
