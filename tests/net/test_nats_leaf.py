"""Federation on NATS across network namespaces: a leaf node dials out to its hub.

Needs root (skipped otherwise, with the reason). A hub ``nats-server`` runs in host ``hub``,
a leaf-node server in host ``leaf`` that connects *out* to the hub's leaf node port; the
manager (examples/nats_federation.py, in its own process) serves on the hub, two agents
connect to the leaf. The manager calls each agent and each agent calls the manager back
while it answers: the scenario of examples/federation/ with no relay of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from callosum_like.tools.netbed.bed import NetBed
from callosum_like.tools.supervisor import ChildProcess

from ..natsserver import NATSServer, require_binary
from .conftest import needs_bed

pytestmark = [
    needs_bed,
    pytest.mark.asyncio,
    pytest.mark.timeout(90),
    pytest.mark.parametrize("bed", [{"hosts": ("hub", "leaf")}], indirect=True),
]

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "nats_federation.py")


@contextlib.asynccontextmanager
async def server(bed: NetBed, host: str, config: str) -> AsyncIterator[NATSServer]:
    require_binary()
    nats = NATSServer(config, host=bed.address(host), name=host, netns=bed.namespace(host))
    await asyncio.to_thread(nats.start)
    try:
        yield nats
    finally:
        await asyncio.to_thread(nats.cleanup)


async def result_of(child: ChildProcess, timeout: float) -> str:
    async with asyncio.timeout(timeout):
        while child.result is None:
            assert child.returncode is None, child.tail()
            await asyncio.sleep(0.05)
    return child.result


async def test_a_manager_on_the_hub_and_agents_behind_a_leaf_call_each_other(
    bed: NetBed,
) -> None:
    listen = f'leafnodes {{ listen: "{bed.address("hub")}:-1" }}'
    async with server(bed, "hub", listen) as hub:
        remote = f"nats-leaf://{bed.address('hub')}:{hub.leafnode_port()}"
        dial_out = f'leafnodes {{ remotes = [ {{ url: "{remote}" }} ] }}'
        async with server(bed, "leaf", dial_out) as leaf:
            await asyncio.to_thread(hub.wait_for_log, "Leafnode connection created")
            manager = bed.spawn("hub", "manager", EXAMPLE, "manager", hub.url, "--agents", "2")
            agents = [
                bed.spawn("leaf", name, EXAMPLE, "agent", leaf.url, name)
                for name in ("agent-1", "agent-2")
            ]
            async with manager, agents[0], agents[1]:
                await manager.ready()
                for agent in agents:
                    await agent.ready()
                greetings = json.loads(await result_of(manager, 40))
    assert sorted(greetings) == ["agent-1", "agent-2"]
    for name, greeting in greetings.items():
        assert greeting == f"hello manager from {name}; the manager said 'noted, {name}'"
