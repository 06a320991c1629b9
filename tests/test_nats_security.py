"""Identity on NATS: the server's permissions make the subject's identity token a proof.

A real nats-server with the authorization block that ``nats_permissions`` writes: one user
tries to speak as, and to listen as, another, and the server refuses it; wrong credentials
are an ``AuthenticationError``; TLS to the server and a token work.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
import trustme

import callosum_like as cl
from callosum_like.lower.nats_permissions import NATSUser, authorization_block

from .conftest import until
from .natsserver import NATSServer, require_binary

pytestmark = pytest.mark.timeout(60)

SUBJECT = "fleet.manager"
USERS = {"manager": "m-secret", "agent-1": "a1-secret", "agent-2": "a2-secret"}


@pytest.fixture(scope="module")
def secured() -> Iterator[NATSServer]:
    require_binary()
    block = authorization_block(
        SUBJECT,
        serving=[NATSUser("manager", password=USERS["manager"])],
        connecting=[NATSUser(n, password=p) for n, p in USERS.items() if n != "manager"],
    )
    with NATSServer(block, name="secured") as server:
        yield server


def transport(user: str, *, identity: str | None = None, **options: Any) -> cl.NATSTransport:
    return cl.NATSTransport(user=user, password=USERS[user], identity=identity, **options)


async def whoami(request: cl.Request) -> Any:
    return request.peer_id


async def echo(request: cl.Request) -> Any:
    return request.body


@contextlib.asynccontextmanager
async def manager(server: NATSServer) -> AsyncIterator[cl.Peer]:
    peer = cl.Peer(
        bind=cl.NATSAddress(server.url, SUBJECT),
        identity="manager",
        transport=transport("manager", trust_subjects=True),
    )

    peer.handle_function("whoami", whoami)
    async with peer:
        yield peer


def agent(server: NATSServer, user: str, identity: str | None = None, **kwargs: Any) -> cl.Peer:
    peer = cl.Peer(
        connect=cl.NATSAddress(server.url, SUBJECT),
        identity=kwargs.pop("claim", user),
        transport=transport(user, identity=identity or user),
        **kwargs,
    )
    peer.handle_function("whoami", whoami)
    return peer


def test_the_block_confines_each_identity_to_its_token() -> None:
    block = authorization_block(
        "s", serving=[NATSUser("m", password="p")], connecting=[NATSUser("a-1", nkey="UABC")]
    )
    assert '"publish": {"allow": ["s.out.>"]}' in block
    assert '"publish": {"allow": ["s.in.a-1.>"]}, "subscribe": {"allow": ["s.out.a-1.>"]}' in block
    assert '{"nkey": "UABC"' in block
    with pytest.raises(ValueError, match="twice"):
        authorization_block("s", serving=[NATSUser("m", password="p")] * 2, connecting=[])
    with pytest.raises(ValueError, match="subject token"):
        NATSUser("a.b", password="p")
    with pytest.raises(ValueError, match="exactly one"):
        NATSUser("a", password="p", nkey="U")
    with pytest.raises(ValueError, match="subject"):
        authorization_block("s.*", serving=[], connecting=[NATSUser("a", password="p")])


@pytest.mark.asyncio
async def test_the_proven_identity_wins_over_the_claimed_one(secured: NATSServer) -> None:
    async with manager(secured) as server, agent(secured, "agent-1", claim="agent-2") as one:
        assert await one.invoke("whoami") == "agent-1"
        assert server.peers == {"agent-1"}
        assert await server.invoke("whoami", to="agent-1") == "manager"


@pytest.mark.asyncio
async def test_posing_as_another_identity_is_refused_by_the_server(secured: NATSServer) -> None:
    async with manager(secured) as server, agent(secured, "agent-2") as honest:
        forger = agent(secured, "agent-1", identity="agent-2", connect_timeout=5)
        with pytest.raises(cl.AuthenticationError, match=r"(?i)permissions violation"):
            await forger.__aenter__()
        await forger.aclose()
        assert server.peers == {"agent-2"}
        assert await honest.invoke("whoami") == "agent-2"
        assert server.statistics().dropped_messages == 0  # nothing of the forger arrived


@pytest.mark.asyncio
async def test_a_user_cannot_publish_or_listen_as_another(secured: NATSServer) -> None:
    """A raw client of user agent-1 tries agent-2's subjects; agent-2 is served throughout."""
    async with manager(secured) as server, agent(secured, "agent-2") as honest:
        refusals: list[str] = []

        async def on_error(error: Exception) -> None:
            refusals.append(str(error))

        raw = await nats.connect(
            secured.url, user="agent-1", password=USERS["agent-1"], error_cb=on_error
        )
        try:
            overheard: list[bytes] = []

            async def listen(msg: Any) -> None:
                overheard.append(msg.data)

            await raw.subscribe(f"{SUBJECT}.out.agent-2.>", cb=listen)
            await raw.subscribe(f"{SUBJECT}.in.>", cb=listen)  # the manager's side
            for subject in (f"{SUBJECT}.in.agent-2.x.0", f"{SUBJECT}.out.agent-2.x.0"):
                await raw.publish(subject, b"\x03")  # a knock, as agent-2
                await raw.publish(subject, b"\x00garbage")
            await raw.flush()
            await until(lambda: len(refusals) >= 6, lambda: f"refusals: {refusals}")
            for _ in range(20):
                assert await honest.invoke("whoami") == "agent-2"
            await asyncio.sleep(0.2)
        finally:
            await raw.close()
        assert all("permissions violation" in r.lower() for r in refusals), refusals
        assert overheard == []
        assert server.peers == {"agent-2"}
        assert server.statistics().dropped_messages == 0


@pytest.mark.asyncio
async def test_wrong_credentials_are_an_authentication_error(secured: NATSServer) -> None:
    wrong = cl.NATSTransport(user="agent-1", password="guess", connect_timeout=5)
    peer = cl.Peer(connect=cl.NATSAddress(secured.url, SUBJECT), transport=wrong)
    with pytest.raises(cl.AuthenticationError, match="refused"):
        await peer.__aenter__()
    await peer.aclose()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NATSServer, Any]]:
    require_binary()
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("nats-tls")
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    config = (
        f'tls {{\n  cert_file: "{folder / "cert.pem"}"\n  key_file: "{folder / "key.pem"}"\n}}\n'
        'authorization { token: "t0ken" }\n'
    )
    with NATSServer(config, name="tls") as server:
        yield server, ca


@pytest.mark.asyncio
async def test_tls_and_a_token_to_the_server(tls_server: tuple[NATSServer, Any]) -> None:
    server, ca = tls_server
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    address = cl.NATSAddress(f"tls://127.0.0.1:{server.port}", "secure")
    options = {"tls": context, "token": "t0ken"}
    bound = cl.Peer(bind=address, transport=cl.NATSTransport(**options))
    bound.handle_function("echo", echo)
    async with bound, cl.Peer(connect=address, transport=cl.NATSTransport(**options)) as client:
        assert await client.invoke("echo", b"x" * 100_000) == b"x" * 100_000
    untrusting = cl.NATSTransport(
        tls=ssl.create_default_context(), token="t0ken", connect_timeout=2
    )
    with pytest.raises(OSError, match="no NATS server"):
        await untrusting.connect(address, max_frame_size=1024)
    wrong = cl.NATSTransport(tls=context, token="nope", connect_timeout=5)
    with pytest.raises(cl.AuthenticationError):
        await wrong.connect(address, max_frame_size=1024)
