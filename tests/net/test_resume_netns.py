"""Session resumption across real link flaps, between processes in network namespaces.

Needs root (skipped otherwise, with the reason). A manager runs in host ``m`` and an agent in
host ``a``, directly or through a relay in host ``r``, each in its own process
(``callosum_like.tools.flaps``): this process steers them over a Unix socket, since it
cannot reach the bed's addresses. Both transports. The mixed load runs both ways (small
calls, 16 MiB echoes, streams) while the hosts' links go down for 1.2-2 s; every handler
counts its runs by operation id, and the books of both sides are compared at the end
(``books.judge``).
"""

from __future__ import annotations

from typing import Any

import pytest

from callosum_like.tools.flaps.scenarios import FlapPlan, flap_series, long_flap
from callosum_like.tools.flaps.stage import HOSTS, Settings, Stage
from callosum_like.tools.netbed.bed import NetBed

from .conftest import needs_bed

TRANSPORTS = ["zeromq", "tcp"]
pytestmark = [
    needs_bed,
    pytest.mark.asyncio,
    pytest.mark.timeout(120),
    pytest.mark.parametrize("bed", [{"hosts": HOSTS}], indirect=True),  # m, r and a
    pytest.mark.parametrize("transport", TRANSPORTS),
]
#: Every flap (1.2 s or more) outlasts the heartbeat timeout: each one suspends the sessions
#: of the hops it cuts, and they resume well within resume_timeout.
SETTINGS = Settings(resume_timeout=20.0, heartbeat_interval=0.2, heartbeat_timeout=0.8)
#: Four flaps, the agents' host and the managers' host in turn: each path is cut four
#: times, each hop of a relayed path twice. A path that does not recover within 20 s, or an
#: operation still running 20 s after the load stopped, is a failure.
PLAN = FlapPlan(count=4, shortest=1.2, longest=2.0, settle=0.5, seed=20, recovery=20, drain=20)
#: The long flap: a short resume_timeout, and calls held each way across it.
LONG = Settings(resume_timeout=1.5, heartbeat_interval=0.2, heartbeat_timeout=0.8)
HOLDS = 3
#: Slack on the contract's bound for a failure (resume_timeout + heartbeat_timeout): the
#: heartbeat looks every heartbeat_interval, once to suspend and once to expire, and the
#: last message heard may have come an interval before the link went down.
TICKS = 3 * LONG.heartbeat_interval


def explain(result: dict[str, Any]) -> str:
    return "\n".join(f"{label}: {path}" for label, path in result["paths"].items())


async def test_mixed_load_crosses_link_flaps_each_call_once_direct_and_via_a_relay(
    bed: NetBed, transport: str
) -> None:
    async with Stage(bed, SETTINGS) as stage:
        direct = await stage.open_path(transport, relayed=False)
        relayed = await stage.open_path(transport, relayed=True)
        result = await flap_series(stage, [direct, relayed], PLAN)
    assert not result["stalled"], result["flaps"]
    assert [flap[0] for flap in result["flaps"]] == ["a", "m", "a", "m"]
    for path in (direct, relayed):
        outcome = result["paths"][path.label]
        verdict, counters = outcome["verdict"], outcome["counters"]
        # The precondition: the mix really ran, and each flap's hop really broke and resumed.
        assert {"small", "big", "stream"} <= set(verdict["by_kind"]), explain(result)
        assert verdict["streams"] > 0
        assert counters["agent"]["sessions_resumed"] >= 1, explain(result)
        if path.relayed:
            assert counters["manager"]["sessions_resumed"] >= 1, explain(result)
        # Nothing failed, every handler ran once, every stream arrived whole and in order.
        assert verdict["failed"] == {}, explain(result)
        assert (verdict["duplicates"], verdict["missing"], verdict["strangers"]) == (0, 0, 0)
        assert (verdict["lost_items"], verdict["repeated_items"]) == (0, 0)
        assert verdict["reordered_streams"] == 0
        assert verdict["passed"] is True
        # Nobody saw a link end, and no resumption was refused.
        for role in ("manager", "agent"):
            assert counters[role]["disconnects"] == 0, explain(result)
            assert counters[role]["resumes_refused"] == 0, explain(result)


async def test_a_flap_longer_than_resume_timeout_fails_exactly_the_pending_calls(
    bed: NetBed, transport: str
) -> None:
    async with Stage(bed, LONG) as stage:
        path = await stage.open_path(transport, relayed=False)
        result = await long_flap(stage, path, HOLDS)
    assert result["before"] == ["ok", "ok"]  # the link worked, both ways
    held = result["held"]
    assert len(held) == 2 * HOLDS  # each side's calls were running (long_flap waits for it)
    assert {outcome for outcome, _ in held.values()} == {"PeerDisconnectedError"}
    # Within the contract's bound (and no sooner than resume_timeout after the flap).
    assert LONG.resume_timeout <= result["seconds"]["min"]
    assert result["seconds"]["max"] <= result["bound"] + TICKS, result["seconds"]
    # Each held handler ran once and was cancelled once: none ran again in the new session.
    assert set(result["ran"].values()) == {1}
    assert set(result["cancelled"].values()) == {1}
    assert result["after"] == ["ok", "ok"]  # a new session works, both ways
