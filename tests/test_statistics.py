"""``peer.statistics()`` is a snapshot users export: plain data, frozen, JSON-serializable."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

import callosum_like as cl
from callosum_like.stats import CountsByName

from .conftest import PairFactory

pytestmark = pytest.mark.timeout(30)


async def fail(request: cl.Request) -> None:
    raise ValueError(request.body)


@pytest.mark.asyncio
async def test_statistics_export_as_plain_json_data(make_pair: PairFactory) -> None:
    server, client = await make_pair()
    server.handle_function("fail", fail)
    with pytest.raises(cl.RPCUserError):
        await client.invoke("fail", "no")
    with pytest.raises(cl.MethodNotFoundError):
        await client.invoke("missing")
    stats = client.statistics()
    data = dataclasses.asdict(stats)
    assert data["errors"] == {"RPCUserError": 1, "MethodNotFoundError": 1}
    assert data["calls_out"] == 2
    assert json.loads(json.dumps(data)) == data
    served = dataclasses.asdict(server.statistics())
    assert served["request_errors"] == {"RPCUserError": 1, "MethodNotFoundError": 1}
    assert pickle.loads(pickle.dumps(stats)) == stats
    assert copy.deepcopy(stats) == stats


def test_a_snapshots_counts_are_read_only() -> None:
    counts = CountsByName({"RPCUserError": 2})
    mutations = [
        lambda: counts.__setitem__("x", 1),
        lambda: counts.__delitem__("RPCUserError"),
        lambda: counts.update(x=1),
        lambda: counts.setdefault("x", 1),
        lambda: counts.pop("RPCUserError"),
        counts.popitem,
        counts.clear,
    ]
    for mutate in mutations:
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    with pytest.raises(TypeError, match="read-only"):
        counts |= {"x": 1}
    assert counts == {"RPCUserError": 2}
    assert isinstance(copy.copy(counts), CountsByName)
    assert pickle.loads(pickle.dumps(counts)) == counts
