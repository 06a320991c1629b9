"""CURVE + ZAP over real sockets on 127.0.0.1, with raw pyzmq ROUTER and DEALER sockets.

What a connecting DEALER's monitor reports (the core maps these to AuthenticationError):

* the server refused the client key (ZAP 400): ``EVENT_HANDSHAKE_FAILED_AUTH`` with value
  400, then ``EVENT_DISCONNECTED``; libzmq does not reconnect.
* the authenticator failed or timed out (ZAP 500): ``EVENT_HANDSHAKE_FAILED_AUTH``, value 500.
* the client used the wrong server public key: ``EVENT_HANDSHAKE_FAILED_NO_DETAIL`` (the server
  cannot decrypt the HELLO and drops the connection), then ``EVENT_DISCONNECTED``; libzmq
  keeps reconnecting and failing the same way every ``reconnect_ivl``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from callosum_like import auth
from callosum_like.lower import zap

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

HANDSHAKE_OUTCOMES = frozenset(
    {
        zmq.EVENT_HANDSHAKE_SUCCEEDED,
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    }
)
SUCCEEDED = (zmq.EVENT_HANDSHAKE_SUCCEEDED, 0)
REFUSED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
AUTHENTICATOR_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 500)
#: How long "nothing arrives" is watched for.
SILENCE_MS = 300
#: Seconds a handshake may take on loopback before the test fails.
HANDSHAKE_WAIT = 5.0


@dataclass
class Client:
    dealer: zmq.asyncio.Socket
    monitor: zmq.asyncio.Socket

    async def outcome(self) -> tuple[int, int]:
        """The first handshake outcome the monitor reports: (event, value)."""
        async with asyncio.timeout(HANDSHAKE_WAIT):
            while True:
                event = parse_monitor_message(await self.monitor.recv_multipart())
                if event["event"] in HANDSHAKE_OUTCOMES:
                    return int(event["event"]), int(event["value"])

    async def events_until_disconnect(self) -> list[int]:
        """Every event up to and including the first EVENT_DISCONNECTED."""
        seen: list[int] = []
        async with asyncio.timeout(HANDSHAKE_WAIT):
            while not seen or seen[-1] != zmq.EVENT_DISCONNECTED:
                event = parse_monitor_message(await self.monitor.recv_multipart())
                seen.append(int(event["event"]))
        return seen


class Harness:
    """Makes sockets on the shared asyncio context and always cleans them up."""

    def __init__(self) -> None:
        self.context = zmq.asyncio.Context.instance()
        self._sockets: list[zmq.asyncio.Socket] = []
        self._monitored: list[tuple[zmq.asyncio.Socket, zmq.asyncio.Socket]] = []
        self._zap_domains: list[str] = []

    def socket(self, kind: int) -> zmq.asyncio.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self._sockets.append(sock)
        return sock

    async def register(self, authenticator: auth.AbstractServerAuthenticator, domain: str) -> str:
        zap_domain = await zap.ZAPServer.for_context(self.context).register(authenticator, domain)
        self._zap_domains.append(zap_domain)
        return zap_domain

    async def bind_server(
        self, authenticator: auth.AbstractServerAuthenticator
    ) -> tuple[zmq.asyncio.Socket, str]:
        router = self.socket(zmq.ROUTER)
        self._zap_domains.append(await zap.configure_curve_server(router, authenticator))
        port = router.bind_to_random_port("tcp://127.0.0.1")
        return router, f"tcp://127.0.0.1:{port}"

    def monitored(self, dealer: zmq.asyncio.Socket, endpoint: str) -> Client:
        monitor = dealer.get_monitor_socket()
        self._monitored.append((dealer, monitor))
        dealer.connect(endpoint)
        return Client(dealer, monitor)

    async def connect_client(
        self, endpoint: str, authenticator: auth.AbstractClientAuthenticator
    ) -> Client:
        dealer = self.socket(zmq.DEALER)
        await zap.configure_curve_client(dealer, authenticator)
        return self.monitored(dealer, endpoint)

    async def aclose(self) -> None:
        for dealer, monitor in self._monitored:
            dealer.disable_monitor()
            monitor.close(linger=0)
        for sock in self._sockets:
            sock.close(linger=0)
        server = zap.ZAPServer.for_context(self.context)
        for zap_domain in self._zap_domains:
            await server.unregister(zap_domain)
        assert not server.running


@pytest_asyncio.fixture
async def harness() -> AsyncIterator[Harness]:
    made = Harness()
    try:
        yield made
    finally:
        await made.aclose()


async def assert_silent(router: zmq.asyncio.Socket) -> None:
    assert not await router.poll(SILENCE_MS), "a message got through"


async def received(router: zmq.asyncio.Socket) -> tuple[bytes, str]:
    """The next message's body and its User-Id property."""
    async with asyncio.timeout(5):
        frames: list[zmq.Frame] = await router.recv_multipart(copy=False)
    user_id = frames[-1].get("User-Id")
    assert isinstance(user_id, str)
    return frames[-1].bytes, user_id


@dataclass
class Keys:
    server: auth.Keypair
    client: auth.Keypair

    def client_auth(self, server_public_key: bytes | None = None) -> auth.ClientAuthenticator:
        return auth.ClientAuthenticator(self.client, server_public_key or self.server.public)


@pytest.fixture
def keys() -> Keys:
    return Keys(auth.generate_keypair(), auth.generate_keypair())


async def test_allowed_client_arrives_with_user_id(harness: Harness, keys: Keys) -> None:
    server_auth = auth.ServerAuthenticator(keys.server, allowed={keys.client.public: "agent-1"})
    router, endpoint = await harness.bind_server(server_auth)
    client = await harness.connect_client(endpoint, keys.client_auth())
    assert await client.outcome() == SUCCEEDED
    await client.dealer.send(b"hello")
    assert await received(router) == (b"hello", "agent-1")


async def test_unknown_client_key_gets_nothing_through(harness: Harness, keys: Keys) -> None:
    server_auth = auth.ServerAuthenticator(keys.server, allowed={})
    router, endpoint = await harness.bind_server(server_auth)
    client = await harness.connect_client(endpoint, keys.client_auth())
    await client.dealer.send(b"let me in")
    events = await client.events_until_disconnect()
    assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in events
    assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in events
    await assert_silent(router)


async def test_refused_client_sees_auth_failure_400(harness: Harness, keys: Keys) -> None:
    server_auth = auth.ServerAuthenticator(keys.server, allowed={})
    _, endpoint = await harness.bind_server(server_auth)
    client = await harness.connect_client(endpoint, keys.client_auth())
    assert await client.outcome() == REFUSED


async def test_wrong_server_key_gets_nothing_through(harness: Harness, keys: Keys) -> None:
    server_auth = auth.ServerAuthenticator(keys.server, allowed={keys.client.public: "agent-1"})
    router, endpoint = await harness.bind_server(server_auth)
    impostor = auth.generate_keypair()  # the client trusts a key the server does not own
    client = await harness.connect_client(endpoint, keys.client_auth(impostor.public))
    await client.dealer.send(b"hello")
    event, _ = await client.outcome()
    assert event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    await assert_silent(router)


async def test_revoked_key_is_refused_on_reconnect(harness: Harness, keys: Keys) -> None:
    server_auth = auth.ServerAuthenticator(keys.server, allowed={keys.client.public: "agent-1"})
    router, endpoint = await harness.bind_server(server_auth)
    first = await harness.connect_client(endpoint, keys.client_auth())
    assert await first.outcome() == SUCCEEDED

    server_auth.revoke(keys.client.public)
    second = await harness.connect_client(endpoint, keys.client_auth())
    # Queue the message first: once refused, the DEALER has no pipe and send() would block.
    await second.dealer.send(b"after revoke")
    assert await second.outcome() == REFUSED
    await assert_silent(router)
    # Revocation applies to handshakes; the connection made before it stays up.
    await first.dealer.send(b"old connection")
    assert await received(router) == (b"old connection", "agent-1")


async def test_two_servers_use_their_own_authenticators(harness: Harness) -> None:
    server_a, server_b = auth.generate_keypair(), auth.generate_keypair()
    client_1, client_2 = auth.generate_keypair(), auth.generate_keypair()
    auth_a = auth.ServerAuthenticator(server_a, allowed={client_1.public: "one-at-a"})
    auth_b = auth.ServerAuthenticator(server_b, allowed={client_2.public: "two-at-b"})
    router_a, endpoint_a = await harness.bind_server(auth_a)
    router_b, endpoint_b = await harness.bind_server(auth_b)

    one_at_a = await harness.connect_client(
        endpoint_a, auth.ClientAuthenticator(client_1, server_a.public)
    )
    two_at_b = await harness.connect_client(
        endpoint_b, auth.ClientAuthenticator(client_2, server_b.public)
    )
    one_at_b = await harness.connect_client(
        endpoint_b, auth.ClientAuthenticator(client_1, server_b.public)
    )
    assert await one_at_a.outcome() == SUCCEEDED
    assert await two_at_b.outcome() == SUCCEEDED
    assert await one_at_b.outcome() == REFUSED

    await one_at_a.dealer.send(b"a")
    await two_at_b.dealer.send(b"b")
    assert await received(router_a) == (b"a", "one-at-a")
    assert await received(router_b) == (b"b", "two-at-b")


async def test_check_client_gets_the_declared_domain(harness: Harness, keys: Keys) -> None:
    seen: list[auth.Credential] = []

    async def check(credential: auth.Credential) -> auth.AuthResult:
        seen.append(credential)
        return auth.AuthResult(True, "tenant-user")

    server_auth = auth.ServerAuthenticator(keys.server, check, domain="tenant-x")
    router, endpoint = await harness.bind_server(server_auth)
    client = await harness.connect_client(endpoint, keys.client_auth())
    assert await client.outcome() == SUCCEEDED
    assert seen == [auth.Credential("tenant-x", keys.client.public)]
    await client.dealer.send(b"hi")
    assert await received(router) == (b"hi", "tenant-user")


async def test_accepted_without_user_id_is_known_by_public_key(
    harness: Harness, keys: Keys
) -> None:
    async def accept_all(credential: auth.Credential) -> auth.AuthResult:
        return auth.AuthResult(True)

    router, endpoint = await harness.bind_server(auth.ServerAuthenticator(keys.server, accept_all))
    client = await harness.connect_client(endpoint, keys.client_auth())
    await client.dealer.send(b"hi")
    assert await received(router) == (b"hi", keys.client.public.decode())


class RaisingAuthenticator(auth.ServerAuthenticator):
    async def check_client(self, credential: auth.Credential) -> auth.AuthResult:
        raise RuntimeError("the user database is down")


async def test_raising_authenticator_refuses_and_server_survives(
    harness: Harness, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    broken = RaisingAuthenticator(keys.server, allowed={keys.client.public: "agent-1"})
    router_broken, endpoint_broken = await harness.bind_server(broken)
    working = auth.ServerAuthenticator(keys.server, allowed={keys.client.public: "agent-1"})
    _, endpoint = await harness.bind_server(working)

    with caplog.at_level(logging.ERROR, logger="callosum_like.lower.zap"):
        refused = await harness.connect_client(endpoint_broken, keys.client_auth())
        assert await refused.outcome() == AUTHENTICATOR_FAILED
    assert "the user database is down" in caplog.text
    await assert_silent(router_broken)

    accepted = await harness.connect_client(endpoint, keys.client_auth())
    assert await accepted.outcome() == SUCCEEDED


async def test_slow_authenticator_times_out_without_blocking_others(
    harness: Harness, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(zap, "CHECK_CLIENT_TIMEOUT", 1.0)
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def hang(credential: auth.Credential) -> auth.AuthResult:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")

    _, slow_endpoint = await harness.bind_server(auth.ServerAuthenticator(keys.server, hang))
    fast = auth.ServerAuthenticator(keys.server, allowed={keys.client.public: "agent-1"})
    _, fast_endpoint = await harness.bind_server(fast)

    stuck = await harness.connect_client(slow_endpoint, keys.client_auth())
    async with asyncio.timeout(HANDSHAKE_WAIT):
        await entered.wait()
    quick = await harness.connect_client(fast_endpoint, keys.client_auth())
    assert await quick.outcome() == SUCCEEDED
    assert not cancelled.is_set(), "the quick request waited for the slow one"
    assert await stuck.outcome() == AUTHENTICATOR_FAILED
    assert cancelled.is_set()


async def test_unknown_zap_domain_is_refused(harness: Harness, keys: Keys) -> None:
    await harness.register(auth.ServerAuthenticator(keys.server, {}), "running")
    router = harness.socket(zmq.ROUTER)
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_SECRETKEY, keys.server.secret)
    router.setsockopt(zmq.ZAP_DOMAIN, b"nobody-registered-this")
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = await harness.connect_client(f"tcp://127.0.0.1:{port}", keys.client_auth())
    assert await client.outcome() == REFUSED


async def test_null_mechanism_is_refused(harness: Harness, keys: Keys) -> None:
    server_auth = auth.ServerAuthenticator(keys.server, allowed={keys.client.public: "x"})
    zap_domain = await harness.register(server_auth, "plain-text")
    router = harness.socket(zmq.ROUTER)  # no CURVE: the NULL mechanism, with our ZAP domain
    router.setsockopt(zmq.ZAP_DOMAIN, zap_domain.encode())
    port = router.bind_to_random_port("tcp://127.0.0.1")
    client = harness.monitored(harness.socket(zmq.DEALER), f"tcp://127.0.0.1:{port}")
    await client.dealer.send(b"cleartext")
    assert await client.outcome() == REFUSED
    await assert_silent(router)


async def test_server_starts_and_stops_with_registrations(harness: Harness, keys: Keys) -> None:
    server = zap.ZAPServer.for_context(harness.context)
    assert zap.ZAPServer.for_context(harness.context) is server
    assert not server.running
    authenticator = auth.ServerAuthenticator(keys.server, {})
    first = await server.register(authenticator, "callosum")
    second = await server.register(authenticator, "callosum")
    assert first != second
    assert server.running
    await server.unregister(first)
    await server.unregister(first)  # unknown by now: ignored
    assert server.running
    await server.unregister(second)
    assert not server.running
    # The endpoint is free again at once.
    probe = harness.socket(zmq.ROUTER)
    probe.bind(zap.ZAP_ENDPOINT)
    probe.unbind(zap.ZAP_ENDPOINT)
    again = await harness.register(authenticator, "callosum")
    assert server.running
    assert again not in (first, second)


async def test_register_fails_clearly_when_endpoint_is_taken(harness: Harness, keys: Keys) -> None:
    squatter = harness.socket(zmq.REP)
    squatter.bind(zap.ZAP_ENDPOINT)
    server = zap.ZAPServer.for_context(harness.context)
    with pytest.raises(RuntimeError, match="another handler"):
        await server.register(auth.ServerAuthenticator(keys.server, {}), "callosum")
    assert not server.running
    squatter.unbind(zap.ZAP_ENDPOINT)


async def test_long_domain_is_shortened_for_libzmq(harness: Harness, keys: Keys) -> None:
    long_domain = "é" * 300
    server_auth = auth.ServerAuthenticator(
        keys.server, allowed={keys.client.public: "agent"}, domain=long_domain
    )
    _, endpoint = await harness.bind_server(server_auth)
    client = await harness.connect_client(endpoint, keys.client_auth())
    assert await client.outcome() == SUCCEEDED


async def test_for_context_rejects_a_blocking_context() -> None:
    context = zmq.Context()
    try:
        with pytest.raises(TypeError, match=r"zmq\.asyncio\.Context"):
            zap.ZAPServer.for_context(context)  # type: ignore[arg-type]
    finally:
        context.term()


async def test_configure_rejects_wrong_authenticator_types(harness: Harness, keys: Keys) -> None:
    sock = harness.socket(zmq.DEALER)
    with pytest.raises(TypeError, match="AbstractServerAuthenticator"):
        await zap.configure_curve_server(sock, keys.client_auth())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AbstractClientAuthenticator"):
        await zap.configure_curve_client(sock, auth.ServerAuthenticator(keys.server, {}))  # type: ignore[arg-type]
