"""NKey authentication to the server: a seed file per user, permissions by identity token.

Needs the ``nkeys`` package (``nats-py[nkeys]``, in the ``test`` extra): nats-py signs the
server's nonce with the seed. The users' keys are made here; the server knows their public
keys only (``NATSUser(name, nkey=...)``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nkeys
import pytest

import callosum_like as cl
from callosum_like.lower.nats_permissions import NATSUser, authorization_block

from .natsserver import NATSServer, require_binary

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]

SUBJECT = "svc"


def make_user(folder: Path, name: str) -> tuple[NATSUser, Path]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path = folder / f"{name}.nk"
    path.write_bytes(seed)
    path.chmod(0o600)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    return NATSUser(name, nkey=public), path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NATSServer, dict[str, Path]]]:
    require_binary()
    folder = tmp_path_factory.mktemp("nkeys")
    users = {name: make_user(folder, name) for name in ("manager", "agent-1", "stranger")}
    block = authorization_block(
        SUBJECT, serving=[users["manager"][0]], connecting=[users["agent-1"][0]]
    )
    with NATSServer(block, name="nkeys") as server:
        yield server, {name: path for name, (_, path) in users.items()}


async def whoami(request: cl.Request) -> Any:
    return request.peer_id


async def test_nkey_users_are_served_by_their_proven_identity(
    keyed: tuple[NATSServer, dict[str, Path]],
) -> None:
    server, seeds = keyed
    address = cl.NATSAddress(server.url, SUBJECT)
    manager = cl.Peer(
        bind=address,
        transport=cl.NATSTransport(nkey_seed=seeds["manager"], trust_subjects=True),
    )
    manager.handle_function("whoami", whoami)
    agent = cl.Peer(
        connect=address,
        identity="someone-else",  # a claim; the server proves agent-1
        transport=cl.NATSTransport(identity="agent-1", nkey_seed=seeds["agent-1"]),
    )
    async with manager, agent:
        assert await agent.invoke("whoami") == "agent-1"


async def test_a_key_the_server_does_not_know_is_refused(
    keyed: tuple[NATSServer, dict[str, Path]],
) -> None:
    server, seeds = keyed
    stranger = cl.NATSTransport(identity="agent-1", nkey_seed=seeds["stranger"], connect_timeout=5)
    with pytest.raises(cl.AuthenticationError):
        await stranger.connect(cl.NATSAddress(server.url, SUBJECT), max_frame_size=1024)
